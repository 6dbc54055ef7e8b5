"""The cloud's tensor models: loaded once, tails built on first use and kept warm."""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.errors import ActivationError, UnknownModelError
from edgecloud.split._partition import Cut, Partitioner

__all__ = ["ModelStore", "TensorModel", "check_activation"]

_MAX_TAILS = 64


def check_activation(p: Partitioner, name: str, value: np.ndarray[Any, Any]) -> None:
    """Raise unless ``value`` has the dtype and shape the graph gives tensor ``name``.

    Raises:
        ActivationError: dtype or shape mismatch at the cut.
    """
    info = p.tensor(name)
    if str(value.dtype) != info.dtype:
        raise ActivationError(
            f"activation {name!r} has dtype {value.dtype}, the cut wants {info.dtype}"
        )
    if value.ndim != len(info.shape) or any(
        want is not None and got != want for got, want in zip(value.shape, info.shape, strict=True)
    ):
        want_s = tuple("?" if d is None else d for d in info.shape)
        raise ActivationError(
            f"activation {name!r} has shape {value.shape}, the cut wants {want_s}"
        )


class TensorModel:
    """One ONNX model: its partitioner, a session for the whole graph, and warm tails.

    Args:
        name: the name clients use.
        path: the ``.onnx`` file.
        providers: onnxruntime providers (None: CUDA when present, else CPU).
        threads: intra-op threads per session (0: onnxruntime decides).
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int = 0,
    ) -> None:
        from edgecloud.common.onnx import OnnxRunner

        self.name = name
        self.partitioner = Partitioner(path)
        self._providers = providers
        self._threads = threads
        self.whole = OnnxRunner(path, providers=providers, intra_op_threads=threads)
        self._tails: dict[tuple[str, ...], Any] = {}
        self._made = 0
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix=f"edgecloud-split-{name}-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)

    @property
    def providers(self) -> list[str]:
        return [str(x) for x in self.whole.info.details["providers"]]

    @property
    def provider(self) -> str:
        return str(self.whole.info.details["providers"][0])

    def tail(self, cut: Cut) -> Any:
        """The warm tail session (an ``OnnxRunner``) for ``cut``, built on first use."""
        from edgecloud.common.onnx import OnnxRunner

        key = cut.tensors
        with self._lock:
            backend = self._tails.get(key)
            if backend is None:
                model = self.partitioner.tail(cut)
                if model is None:
                    raise ActivationError("the all-device cut has no tail to run")
                self._made += 1
                path = Path(self._dir) / f"tail-{self._made}.onnx"
                path.write_bytes(model.SerializeToString())
                backend = OnnxRunner(
                    path, providers=self._providers, intra_op_threads=self._threads
                )
                if len(self._tails) >= _MAX_TAILS:
                    # a client may ask for any cut: keep the warm set bounded, oldest out
                    oldest = next(iter(self._tails))
                    self._tails.pop(oldest).close()
                self._tails[key] = backend
            return backend

    def close(self) -> None:
        with self._lock:
            for b in self._tails.values():
                b.close()
            self._tails.clear()
        self.whole.close()
        self._cleanup()


class ModelStore:
    """Tensor models by name.

    Raises:
        ModelNotFoundError, ModelIntegrityError: a model file is missing or invalid.
    """

    def __init__(
        self,
        models: Mapping[str, str | Path],
        *,
        providers: Sequence[str] | None = None,
        threads: int = 0,
    ) -> None:
        self._models: dict[str, TensorModel] = {}
        try:
            for name, path in models.items():
                self._models[name] = TensorModel(name, path, providers=providers, threads=threads)
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def get(self, name: str) -> TensorModel:
        """The model called ``name``.

        Raises:
            UnknownModelError: no such model here.
        """
        model = self._models.get(name)
        if model is None:
            raise UnknownModelError(f"unknown model {name!r}; this service has {self.names}")
        return model

    def close(self) -> None:
        for m in self._models.values():
            m.close()
        self._models.clear()
