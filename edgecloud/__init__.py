"""edgecloud: edge-cloud collaborative inference.

A device runs a small quantized model locally and streams tokens with their
confidence; the same API will escalate to cloud models when the device is
unsure. ``import edgecloud`` is light: native libraries (llama.cpp,
onnxruntime, torch) load only when a model is.

Examples:
    >>> from edgecloud import Client
    >>> with Client.local() as client:                              # doctest: +SKIP
    ...     result = client.generate("Q: What is the capital of Japan?\\nA:", stop=["\\n"])
    ...     print(result.text, result.confidence.mean_logprob)
"""

from __future__ import annotations

import logging

from edgecloud._client import AsyncClient, AsyncStream, Client, Stream
from edgecloud._version import __version__
from edgecloud.config import Settings
from edgecloud.errors import (
    ConfigError,
    ContextOverflowError,
    DeviceError,
    EdgeCloudError,
    InvalidRequestError,
    ModelIntegrityError,
    ModelLoadError,
    ModelNotFoundError,
    StructuredOutputError,
)
from edgecloud.types import (
    ChatMessage,
    Chunk,
    Confidence,
    GenerateOptions,
    GenerationResult,
    SamplingParams,
    Timings,
    ToolCall,
    Usage,
)

__all__ = [
    "AsyncClient",
    "AsyncStream",
    "ChatMessage",
    "Chunk",
    "Client",
    "Confidence",
    "ConfigError",
    "ContextOverflowError",
    "DeviceError",
    "EdgeCloudError",
    "GenerateOptions",
    "GenerationResult",
    "InvalidRequestError",
    "ModelIntegrityError",
    "ModelLoadError",
    "ModelNotFoundError",
    "SamplingParams",
    "Settings",
    "Stream",
    "StructuredOutputError",
    "Timings",
    "ToolCall",
    "Usage",
    "__version__",
]

logging.getLogger("edgecloud").addHandler(logging.NullHandler())
