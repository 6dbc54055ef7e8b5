"""An answer as chunks that may be taken back, and the chunks that keep the app in step.

The cloud may reject the end of the device's text at a hand-off (or of a speculative
draft): the answer then loses characters from its end. :class:`Transcript` holds an
answer's chunks and applies such cuts, the same way for the engine and for the app's
side (the facade's result builder), so both count the same tokens. :class:`Emitter`
turns the answer's changes into the chunks the app receives: a cut of text the app has
becomes ``Chunk.retracted`` on the next chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from edgecloud.common.text import StopMatcher
from edgecloud.types import Chunk

__all__ = ["Emitter", "Transcript"]


class Transcript:
    """The chunks of an answer, with every retraction applied.

    ``add`` first removes ``chunk.retracted`` characters from the end, then appends the
    chunk. Removing takes whole chunks from the end and then, when the cut falls inside
    one, shortens that chunk's text (it stays: part of its text stands).
    """

    low_chars: int
    """The shortest the text has been since :meth:`mark`: that much of it stands since."""
    low_chunks: int
    """The fewest chunks since :meth:`mark` (the last of them may have been shortened)."""

    def __init__(self, chunks: Iterable[Chunk] = ()) -> None:
        self.chunks: list[Chunk] = []
        self._ends: list[int] = []
        self._text = ""
        self.mark()
        self.extend(chunks)
        self.mark()

    def mark(self) -> None:
        """Start watching how far the answer is cut back (``low_chars``, ``low_chunks``)."""
        self.low_chars = len(self._text)
        self.low_chunks = len(self.chunks)

    @property
    def text(self) -> str:
        return self._text

    @property
    def tokens(self) -> int:
        """Chunks that are model tokens (``token_id >= 0``; not flushed text)."""
        return sum(1 for c in self.chunks if c.token_id >= 0)

    def end(self, n: int) -> int:
        """Characters in the first ``n`` chunks."""
        return self._ends[n - 1] if n > 0 else 0

    def add(self, chunk: Chunk) -> None:
        if chunk.retracted:
            self.retract(chunk.retracted)
        self.chunks.append(chunk)
        self._text += chunk.text
        self._ends.append(len(self._text))

    def extend(self, chunks: Iterable[Chunk]) -> None:
        for chunk in chunks:
            self.add(chunk)

    def retract(self, chars: int) -> None:
        """Remove ``chars`` characters from the end (all of them, if there are fewer)."""
        left = chars
        while left > 0 and self.chunks:
            last = self.chunks[-1]
            if len(last.text) <= left:
                self.chunks.pop()
                self._ends.pop()
                left -= len(last.text)
            else:
                self.chunks[-1] = replace(last, text=last.text[: len(last.text) - left])
                self._ends[-1] -= left
                left = 0
        self._cut()

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` chunks."""
        del self.chunks[n:], self._ends[n:]
        self._cut()

    def _cut(self) -> None:
        self._text = self._text[: self.end(len(self.chunks))]
        self.low_chars = min(self.low_chars, len(self._text))
        self.low_chunks = min(self.low_chunks, len(self.chunks))


class Emitter:
    """Hands the app the chunks that bring its text up to the answer's (see module doc).

    Args:
        answer: the answer, changed by its owner between calls of :meth:`emit`.
        emitted: how many of its chunks the app already has (their text as it is now).
        stops: stop sequences to find in the whole answer, across the pieces it was
            assembled from: text that may grow into one is held back, and the answer
            is cut before the first one that completes (``stopped``).
    """

    def __init__(self, answer: Transcript, *, emitted: int = 0, stops: Sequence[str] = ()) -> None:
        self.answer = answer
        self.emitted = emitted
        self.shown = answer.text[: answer.end(emitted)]
        """The text the app has."""
        self.retracted = 0
        """Characters taken back from the app so far."""
        self.stopped = False
        self._stops = tuple(stops)

    def emit(self, *, final: bool = False) -> list[Chunk]:
        """The chunks for what changed since the app's text was last brought up to date.

        When the answer was cut back below text the app has, the first chunk carries the
        retraction; with no chunk to carry it, it waits for the next call, unless ``final``
        (the answer is complete: held text is released too, and a lone retraction comes on
        an empty chunk with ``token_id=-1``).
        """
        answer = self.answer
        if self.stopped:  # the answer ended at a stop sequence: what came since is no part of it
            answer.truncate(self.emitted)
        safe = answer.text
        if self._stops and not self.stopped:
            matcher = StopMatcher(self._stops)
            safe = matcher.feed(answer.text)
            if matcher.stopped:
                self.stopped = True
                answer.retract(len(answer.text) - len(safe))  # the answer ends before it
            elif final:
                safe += matcher.flush()
        # The app's text stands as far as the answer was never cut back below it.
        common = min(len(self.shown), answer.low_chars, len(safe))
        retract = len(self.shown) - common
        pieces: list[tuple[int, str]] = []
        cursor = common
        for j in range(min(self.emitted, answer.low_chunks), len(answer.chunks)):
            end = min(answer.end(j + 1), len(safe))
            pieces.append((j, safe[cursor:end] if end > cursor else ""))
            cursor = max(cursor, end)
        rest = safe[cursor:]
        if not pieces and not rest and not (final and retract):
            return []
        out = [
            replace(answer.chunks[j], text=text, index=j, retracted=retract if n == 0 else 0)
            for n, (j, text) in enumerate(pieces)
        ]
        if rest or not out:
            source = answer.chunks[-1].source if answer.chunks else "cloud"
            out.append(Chunk(rest, -1, 0.0, 0.0, source, len(answer.chunks),
                             retracted=0 if out else retract))  # fmt: skip
        self.emitted = len(answer.chunks)
        self.shown = safe
        self.retracted += retract
        answer.mark()
        return out
