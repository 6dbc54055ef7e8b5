"""Local model backends. Only the modules here import native bindings, and only
when their backend is first used: ``LlamaCppBackend`` needs llama-cpp-python,
``OnnxBackend`` needs onnxruntime (both in the ``[device]`` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgecloud.device.backends._base import (
    AdapterCapable,
    BackendInfo,
    LocalBackend,
    TensorBackend,
    TensorSpec,
    TextBackend,
)

if TYPE_CHECKING:
    from edgecloud.device.backends.llama_cpp import LlamaCppBackend
    from edgecloud.device.backends.onnx import OnnxBackend

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
    "LlamaCppBackend": "edgecloud.device.backends.llama_cpp",
    "OnnxBackend": "edgecloud.device.backends.onnx",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
