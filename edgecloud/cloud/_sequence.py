"""One request inside the scheduler: its token ids, streamed text and stop rules (pure Python).

Text is produced by incremental detokenization: the ids since the last emitted
boundary are decoded twice (with and without the newest token) and only the new
suffix is emitted, holding it back while it ends in U+FFFD (a multi-byte
character split across tokens). Decoding the whole answer each step would be
quadratic; this window stays a few tokens long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgecloud.common.text import StopMatcher
from edgecloud.types import Chunk, Finish, FinishReason, SamplingParams

__all__ = ["Emit", "Sequence_", "TokenStep"]

Emit = Callable[["Chunk | Finish | BaseException"], None]
"""Hands one event to the request's consumer; called from the scheduler thread."""


@dataclass(frozen=True, slots=True)
class TokenStep:
    """What the engine produced for one sequence in one step."""

    token_id: int
    logprob: float
    entropy: float


class _Detokenizer:
    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""


@dataclass(eq=False)
class Sequence_:
    """A request's state while it waits for, and then holds, a batch slot.

    ``cancelled`` is set from the event loop (client gone, deadline passed) and
    read by the scheduler thread between decode steps; a plain attribute write is
    atomic in CPython, so no lock is needed for this one-way flag.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    adapter_id: str | None
    emit: Emit
    decode: Callable[[Sequence[int]], str]
    eos_ids: frozenset[int]
    max_new_tokens: int
    deadline: float | None = None
    """``time.monotonic()`` after which the sequence is cancelled."""
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    enqueued_at: float = field(default_factory=time.monotonic)
    _detok: _Detokenizer = field(init=False)
    _stops: StopMatcher = field(init=False)
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._detok = _Detokenizer(self.decode)
        self._stops = StopMatcher(self.params.stop)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def should_cancel(self, now: float) -> bool:
        return self.cancelled or (self.deadline is not None and now >= self.deadline)

    def push(self, step: TokenStep) -> bool:
        """Emit one generated token; returns True when the sequence is finished."""
        if step.token_id in self.eos_ids:
            self.finish("stop")
            return True
        index = len(self.generated)
        self.generated.append(step.token_id)
        text = self._stops.feed(self._detok.add(step.token_id))
        if self._stops.stopped:
            # The token that completed a stop sequence is not part of the answer,
            # but the text before the stop sequence in it is.
            if text:
                self.emit(Chunk(text, -1, 0.0, 0.0, "cloud", index))
            self.finish("stop")
            return True
        self.emit(Chunk(text, step.token_id, step.logprob, step.entropy, "cloud", index))
        if len(self.generated) >= self.max_new_tokens:
            self.finish("length")
            return True
        return False

    def finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        """Emit the trailing text and the end marker (or ``error``), once."""
        if self._done.is_set():
            return
        self._done.set()
        if error is not None:
            self.emit(error)
            return
        if reason != "stop" or not self._stops.stopped:
            tail = self._stops.feed(self._detok.flush()) + self._stops.flush()
            if tail and not self._stops.stopped:
                self.emit(Chunk(tail, -1, 0.0, 0.0, "cloud", len(self.generated)))
        self.emit(Finish(reason, len(self.prompt_ids), len(self.generated)))
