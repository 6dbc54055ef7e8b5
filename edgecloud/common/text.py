"""Pure text handling: prompt checks, UTF-8 reassembly and stop sequences."""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence

from pydantic import ValidationError

from edgecloud.common.settings import format_validation_error
from edgecloud.errors import InvalidRequestError
from edgecloud.types import ChatMessage, Prompt

__all__ = ["StopMatcher", "Utf8Stream", "normalize_prompt", "same_answer"]


class Utf8Stream:
    """Turns token byte pieces into text, holding back incomplete characters.

    A token may end in the middle of a multi-byte character; its bytes are kept
    until the rest arrives. Bytes that can never form valid UTF-8 become U+FFFD.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds stop sequences in streamed text without emitting any part of them.

    ``feed`` returns the text that is safe to show now: everything except a tail
    that might still grow into a stop sequence. Once a stop sequence completes,
    ``stopped`` is true and the text before it has been returned.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._pending + text
        # Generation ends where a stop sequence first *completes* (as if the text arrived
        # one character at a time), the earliest-starting one on a tie; so the result does
        # not depend on how the text was split into tokens.
        hits = [(i + len(stop), i) for stop in self._stops if (i := buf.find(stop)) >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[: min(hits)[1]]
        hold = self._held_tail(buf)
        self._pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """Release held text at the end of generation (no stop sequence followed)."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _held_tail(self, buf: str) -> int:
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best


def _validate_text(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{what} is not valid UTF-8 text: {exc.reason} at position {exc.start}"
        ) from exc
    return text


def normalize_prompt(prompt: Prompt | bytes) -> str | list[ChatMessage]:
    """Check a prompt and turn dict messages into :class:`ChatMessage` objects.

    Raises:
        InvalidRequestError: empty prompt, invalid UTF-8, or a malformed message.
    """
    if isinstance(prompt, bytes):
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(
                f"prompt is not valid UTF-8: {exc.reason} at byte {exc.start}"
            ) from exc
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidRequestError("prompt must not be empty")
        return _validate_text(prompt, "prompt")
    messages: list[ChatMessage] = []
    for i, msg in enumerate(prompt):
        try:
            m = msg if isinstance(msg, ChatMessage) else ChatMessage.model_validate(msg)
        except ValidationError as exc:
            raise InvalidRequestError(
                f"messages[{i}] is invalid: {format_validation_error(exc)}"
            ) from exc
        messages.append(
            ChatMessage(role=m.role, content=_validate_text(m.content, f"messages[{i}]"))
        )
    if not messages:
        raise InvalidRequestError("messages must not be empty")
    return messages


_NUMBER = re.compile(r"(?:(?<![\w.-])-)?\d+(?:[.,]\d+)*")  # "D-768" is 768, not -768
_WORD = re.compile(r"[^\W\d_]+")
_FILLER = frozenset(
    {
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "it",
        "its",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "by",
        "with",
        "and",
        "or",
        "as",
        "this",
        "that",
        "these",
        "those",
        "about",
        "approximately",
        "around",
        "roughly",
    }
)


def _numbers(text: str) -> list[float]:
    out = []
    for m in _NUMBER.finditer(text):
        try:
            out.append(float(m.group().replace(",", "")))
        except ValueError:  # "1,2,3": a list, not one number
            out += [float(x) for x in m.group().split(",") if x]
    return sorted(out)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _FILLER}


def same_answer(answer: str, reference: str) -> bool:
    """Whether a short answer says what ``reference`` says (first lines compared).

    The numbers must be the same (a fact's figure, not another fact's: the error a
    small model makes most), and the words of one, fillers aside, must all be in the
    other ("red" and "The lamp is red" agree; "red" and "amber" do not; "3.5" and
    "3.5 hours" agree). Strict on
    purpose: it decides whether a device's confident answer was wrong (calibration,
    shadow checks), where calling a right answer wrong costs an escalation and
    calling a wrong one right costs a wrong answer shown.
    """
    a = answer.strip().split("\n", 1)[0]
    r = reference.strip().split("\n", 1)[0]
    if not a or not r or _numbers(a) != _numbers(r):
        return False
    wa, wr = _words(a), _words(r)
    if not wa or not wr:
        # A figure alone ("3.5") says what the same figure with its unit says; words alone
        # on one side and nothing on the other say nothing alike.
        return bool(_numbers(r)) or (not wa and not wr)
    return wa <= wr or wr <= wa
