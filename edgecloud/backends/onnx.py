"""The device's tensor backend: an ONNX graph run by onnxruntime."""

from __future__ import annotations

from edgecloud.backends._base import TensorBackend
from edgecloud.common.onnx import OnnxRunner, available_providers

__all__ = ["OnnxBackend", "available_providers"]


class OnnxBackend(OnnxRunner, TensorBackend):
    """An ONNX graph on this device, with named numpy inputs and outputs.

    The CUDA execution provider is used when this onnxruntime build has it and a
    GPU is present, the CPU provider otherwise (or the ``providers`` you pass).
    See :class:`~edgecloud.common.onnx.OnnxRunner` for the arguments and errors.
    """
