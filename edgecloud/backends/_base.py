"""The interfaces the device runtime sees; only concrete backends touch native code."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgecloud.common.lifecycle import Closing
from edgecloud.errors import InvalidRequestError
from edgecloud.types import BackendInfo, ChatMessage, Chunk, Finish, SamplingParams, TensorSpec

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "AdapterCapable",
    "BackendInfo",
    "LocalBackend",
    "TensorBackend",
    "TensorSpec",
    "TextBackend",
]


class LocalBackend(Closing, ABC):
    """A model loaded on this device. Close it (or use ``with``) to free native memory."""

    @property
    @abstractmethod
    def info(self) -> BackendInfo: ...

    @abstractmethod
    def close(self) -> None:
        """Free the model. Idempotent."""


class TextBackend(LocalBackend):
    """A language model that streams tokens with their confidence signals."""

    @property
    @abstractmethod
    def n_ctx(self) -> int:
        """Context window in tokens."""

    @abstractmethod
    def count_tokens(self, prompt: str | Sequence[ChatMessage]) -> int:
        """Tokens the prompt takes in the context, after the chat template."""

    @abstractmethod
    def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        prefix: str = "",
    ) -> Iterator[Chunk | Finish]:
        """Validate the request now, then return an iterator of chunks ending in one ``Finish``.

        ``prefix`` is text the answer already starts with (for example what the cloud
        wrote before it failed): the model continues after it, and it is not repeated
        in the chunks.

        Raises (eagerly, before any token):
            ContextOverflowError: the prompt does not fit in the context.
            InvalidRequestError: the request cannot be served by this model.
        """

    def check_schema(self, schema: str) -> None:
        """Refuse, before any token, a JSON schema (``SamplingParams.json_schema`` text)
        this backend cannot constrain its output to. A backend without a grammar engine
        refuses every schema.

        Raises:
            InvalidRequestError: the schema cannot be compiled to a grammar here.
        """
        raise InvalidRequestError(
            f"the {self.info.kind} backend cannot constrain its output to a JSON schema"
        )


@runtime_checkable
class AdapterCapable(Protocol):
    """A backend that hot-swaps LoRA adapters on its loaded base model.

    ``isinstance(backend, AdapterCapable)`` tells the device's adapter manager
    whether a backend can take adapters at all (only the presence of the members
    is checked at runtime).
    """

    @property
    def adapter(self) -> Path | None:
        """The adapter file applied now, or None for the base model."""
        ...

    def set_adapter(self, path: Path | None, *, scale: float = 1.0) -> float:
        """Apply the adapter at ``path`` (None: the base model) from the next request on.

        Waits for a running generation; never changes the weights under it.

        Returns:
            Seconds the swap took.

        Raises:
            AdapterFormatError: not an adapter this backend can load.
            AdapterMismatchError: an adapter for another base model.
        """
        ...


class TensorBackend(LocalBackend):
    """A tensor model (vision, control) with named numpy inputs and outputs."""

    @property
    @abstractmethod
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    @abstractmethod
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @abstractmethod
    def run(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run the graph. Raises InvalidRequestError on a name, dtype or shape mismatch."""


class FifoLock:
    """A lock granted in arrival order; a waiter can give up when its cancel event is set."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._held = False

    def acquire(self, cancel: threading.Event | None = None) -> bool:
        """Wait for the lock; False when ``cancel`` was set first."""
        me = object()
        with self._cond:
            self._queue.append(me)
            while self._held or self._queue[0] is not me:
                if cancel is not None and cancel.is_set():
                    self._queue.remove(me)
                    self._cond.notify_all()
                    return False
                self._cond.wait(timeout=0.05 if cancel is not None else None)
            self._queue.popleft()
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()
