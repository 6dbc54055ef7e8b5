"""ONNX graphs run by onnxruntime: the one module that knows onnxruntime.

The device's tensor backend, the sentence encoder and the cloud tails of split
models all run their graphs through :class:`OnnxRunner`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgecloud.common.models import check_model_file
from edgecloud.errors import (
    BackendClosedError,
    DeviceError,
    InvalidRequestError,
    ModelIntegrityError,
)
from edgecloud.types import BackendInfo, TensorSpec

__all__ = ["OnnxRunner", "available_providers", "profile_nodes"]

# onnxruntime's type strings for graph inputs/outputs -> numpy dtypes.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, best first."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorSpec(arg.name, _ORT_DTYPES.get(arg.type, arg.type), shape)


class OnnxRunner:
    """An ONNX graph run by onnxruntime with named numpy inputs and outputs.

    Uses the CUDA execution provider when this onnxruntime build has it and a GPU
    is present, the CPU provider otherwise (or the ``providers`` you pass).

    Thread safety: ``run`` may be called from many threads at once
    (onnxruntime's ``InferenceSession.run`` is thread-safe); ``close`` waits for
    none of them, so close only when no call is in flight.

    Args:
        path: ``.onnx`` file.
        providers: onnxruntime execution providers, in order of preference.
        intra_op_threads: threads per operator; 0 lets onnxruntime decide.

    Raises:
        ModelNotFoundError: no such file.
        ModelIntegrityError: onnxruntime cannot parse the file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        self._path = check_model_file(Path(path), kind=".onnx")
        available = ort.get_available_providers()
        if providers is None:
            preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            providers = [p for p in preferred if p in available]
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise InvalidRequestError(
                f"onnxruntime providers {unknown} are not available here (have {available})"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        try:
            self._session: Any = ort.InferenceSession(
                str(self._path), sess_options=opts, providers=list(providers)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelIntegrityError(f"onnxruntime cannot load {self._path}: {exc}") from exc
        self._inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self._outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._lock = threading.Lock()
        self._info = BackendInfo(
            kind="onnxruntime",
            model=self._path.stem,
            path=str(self._path),
            details={"providers": list(self._session.get_providers())},
        )

    @property
    def info(self) -> BackendInfo:
        return self._info

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        session = self._session
        if session is None:
            raise BackendClosedError(f"this {type(self).__name__} has been closed")
        feeds = self._check_inputs(inputs)
        names = list(output_names) if output_names is not None else [o.name for o in self._outputs]
        known = {o.name for o in self._outputs}
        missing = [n for n in names if n not in known]
        if missing:
            raise InvalidRequestError(f"unknown outputs {missing}; the graph has {sorted(known)}")
        try:
            values = session.run(names, feeds)
        except Exception as exc:  # a shape the graph rejects deep inside
            raise DeviceError(f"onnxruntime failed to run {self._path.name}: {exc}") from exc
        return dict(zip(names, values, strict=True))

    def _check_inputs(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, Any]:
        expected = {s.name: s for s in self._inputs}
        unknown = sorted(set(inputs) - set(expected))
        missing = sorted(set(expected) - set(inputs))
        if unknown or missing:
            raise InvalidRequestError(
                f"inputs do not match the graph: missing {missing}, unknown {unknown}"
            )
        feeds: dict[str, Any] = {}
        for name, spec in expected.items():
            value = np.asarray(inputs[name])
            if str(value.dtype) != spec.dtype:
                raise InvalidRequestError(
                    f"input {name!r} has dtype {value.dtype}, the graph wants {spec.dtype}"
                )
            if value.ndim != len(spec.shape) or any(
                want is not None and got != want
                for got, want in zip(value.shape, spec.shape, strict=True)
            ):
                raise InvalidRequestError(
                    f"input {name!r} has shape {value.shape}, the graph wants "
                    f"{tuple('?' if d is None else d for d in spec.shape)}"
                )
            feeds[name] = value
        return feeds

    def close(self) -> None:
        with self._lock:
            self._session = None


def profile_nodes(
    model: bytes,
    feeds: Mapping[str, npt.NDArray[Any]],
    *,
    repeats: int = 5,
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 1,
) -> tuple[dict[str, float], dict[str, np.ndarray[Any, Any]]]:
    """Time every node of a graph with onnxruntime's profiler, and return its outputs.

    Graph optimizations are off, so each ONNX node is one kernel under its own
    name (fusion would fold a Relu into its Conv and the Relu would vanish from
    the profile); the per-node times therefore add up to a little more than an
    optimized session takes, the same for every node, which is what a cost
    model comparing partitions needs.

    Args:
        model: a serialized ``onnx.ModelProto`` whose nodes all have unique names.
        feeds: the graph inputs.
        repeats: timed runs; the median of each node is kept.
        providers: execution providers (default: CPU).
        intra_op_threads: threads per operator.

    Returns:
        ``({node name: median seconds}, {output name: value of the last run})``.

    Raises:
        ModelIntegrityError: onnxruntime cannot load the graph.
        DeviceError: the graph fails on these inputs.
    """
    import json
    import os
    import statistics
    import tempfile

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="edgecloud-profile-") as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        try:
            session = ort.InferenceSession(
                model, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelIntegrityError(f"onnxruntime cannot load the graph: {exc}") from exc
        names = [o.name for o in session.get_outputs()]
        values: list[Any] = []
        try:
            for _ in range(max(1, repeats) + 1):
                values = session.run(names, dict(feeds))
        except Exception as exc:  # a shape the graph rejects deep inside
            raise DeviceError(f"onnxruntime failed to run the graph: {exc}") from exc
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    per_node: dict[str, list[float]] = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            per_node.setdefault(name[: -len("_kernel_time")], []).append(float(e["dur"]) / 1e6)
    # the first run allocates; it is left out unless it is the only one
    times = {n: statistics.median(v[1:] if len(v) > 1 else v) for n, v in per_node.items()}
    return times, dict(zip(names, values, strict=True))
