"""Local model backends. Only the modules here import native bindings, and only
when their backend is first used: ``LlamaCppBackend`` needs llama-cpp-python,
``OnnxBackend`` needs onnxruntime (both in the ``[device]`` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.backends._base import (
    AdapterCapable,
    BackendInfo,
    LocalBackend,
    TensorBackend,
    TensorSpec,
    TextBackend,
)
from edgecloud.common.lazy import lazy_attributes

if TYPE_CHECKING:
    from edgecloud.backends.llama_cpp import LlamaCppBackend
    from edgecloud.backends.onnx import OnnxBackend

__all__ = [
    "AdapterCapable",
    "BackendInfo",
    "LlamaCppBackend",
    "LocalBackend",
    "OnnxBackend",
    "TensorBackend",
    "TensorSpec",
    "TextBackend",
]

_LAZY = {
    "LlamaCppBackend": "edgecloud.backends.llama_cpp",
    "OnnxBackend": "edgecloud.backends.onnx",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
