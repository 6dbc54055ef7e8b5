"""One request inside the scheduler: its token ids, streamed text and stop rules (pure Python).

Text is produced by incremental detokenization: the ids since the last emitted
boundary are decoded twice (with and without the newest token) and only the new
suffix is emitted, holding it back while it ends in U+FFFD (a multi-byte
character split across tokens). Decoding the whole answer each step would be
quadratic; this window stays a few tokens long.

A sequence that verifies its assistant prefix (``verify_tokens > 0``: the last
tokens of ``prompt_ids`` are the device's answer so far) learns from the engine
how many of those tokens the model accepted (:meth:`Sequence_.accept_prefix`) and
turns that into characters of the prefix text, announced by a
:class:`~edgecloud.types.Retraction` before its first chunk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgecloud.common.text import StopMatcher
from edgecloud.types import Chunk, Finish, FinishReason, Retraction, SamplingParams

if TYPE_CHECKING:
    from edgecloud.cloud._grammar import SequenceGrammar

__all__ = ["Emit", "Sequence_", "TokenStep"]

Emit = Callable[["Chunk | Finish | Retraction | BaseException"], None]
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
    verify_tokens: int = 0
    """The last this many of ``prompt_ids`` are the assistant prefix to verify (0: none)."""
    prefix_text: str = ""
    """The assistant prefix as the device sent it (what ``Retraction.kept`` counts in)."""
    prefix_logprobs: tuple[float, ...] = ()
    """The device's log-probability of each prefix token; the engine uses them only when
    there is one per verified token."""
    grammar: SequenceGrammar | None = None
    """The sequence's place in its JSON schema's grammar (None: free text); the engine
    masks its logits with it and advances it over each chosen token."""
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    enqueued_at: float = field(default_factory=time.monotonic)
    _detok: _Detokenizer = field(init=False)
    _stops: StopMatcher = field(init=False)
    _done: threading.Event = field(default_factory=threading.Event)
    _retraction: Retraction | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.verify_tokens < len(self.prompt_ids):
            raise ValueError("the prefix to verify must follow at least one prompt token")
        self._detok = _Detokenizer(self.decode)
        self._stops = StopMatcher(self.params.stop)

    @property
    def prefix_ids(self) -> list[int]:
        """The assistant prefix's tokens (empty unless it is verified)."""
        return self.prompt_ids[len(self.prompt_ids) - self.verify_tokens :]

    def accept_prefix(self, first_rejected: int) -> int:
        """Settle the verified prefix: the model disagreed first with token ``first_rejected``
        (``verify_tokens`` when it agreed with all). Returns the prefix tokens kept.

        The kept text is the longest common prefix, in characters, of the prefix text
        and the decoded kept tokens: the model tokenizes the device's text its own way,
        and a decode need not give back the exact text. Kept tokens never end inside
        a character split across byte tokens (they would decode to U+FFFD): such a
        token goes back to the model, which then generates it again, whole.
        """
        kept = first_rejected
        if kept >= self.verify_tokens:
            return self.verify_tokens
        ids = self.prefix_ids
        decoded = self.decode(ids[:kept])
        while kept > 0 and decoded.endswith("\ufffd") and not self.prefix_text.startswith(decoded):
            kept -= 1
            decoded = self.decode(ids[:kept])
        chars = _common_prefix(decoded, self.prefix_text)
        self._retraction = Retraction(chars, self.prefix_text[chars:], kept)
        return kept

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def should_cancel(self, now: float) -> bool:
        return self.cancelled or (self.deadline is not None and now >= self.deadline)

    def push(self, step: TokenStep) -> bool:
        """Emit one generated token; returns True when the sequence is finished."""
        if self._retraction is not None:
            self.emit(self._retraction)
            self._retraction = None
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


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
