"""The conversation the window shows: questions, answers as they stream, and for each
answer where it ran (``local``, ``cloud``, ``mixed``) and why.

Plain Python: the widgets render :meth:`Turn.badge` and :meth:`Turn.why`, tests read
them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecloud_desktop.events import Delta, Event, Final

PENDING = "…"


@dataclass
class Turn:
    """One question and its answer."""

    question: str
    via: str = ""
    """Who was asked: ``this computer`` or the device's label."""
    answer: str = ""
    sources: set[str] = field(default_factory=set)
    final: Final | None = None
    error: str | None = None
    retracted: int = 0
    """Characters shown and then taken back (the cloud rejected the device's text)."""

    @property
    def done(self) -> bool:
        return self.final is not None or self.error is not None

    def apply(self, event: Event) -> None:
        """Add a streamed event: text (after dropping what it retracts), or the end."""
        if isinstance(event, Delta):
            if event.retracted:
                keep = max(0, len(self.answer) - event.retracted)
                self.retracted += len(self.answer) - keep
                self.answer = self.answer[:keep]
            self.answer += event.text
            self.sources.add(event.source)
        else:
            self.final = event

    def fail(self, message: str) -> None:
        self.error = message

    @property
    def source(self) -> str:
        """Where the answer ran: the final word when there is one, else what streamed."""
        if self.final is not None:
            return self.final.source
        if len(self.sources) > 1:
            return "mixed"
        return next(iter(self.sources), "")

    @property
    def badge(self) -> str:
        """The label beside the answer: ``local``, ``cloud``, ``mixed``, ``error`` or ``…``."""
        if self.error is not None:
            return "error"
        return self.source if self.done and self.source else PENDING

    def why(self) -> str:
        """One line: why the answer ran where it did (the routing policy's reason)."""
        if self.error is not None:
            return self.error
        final = self.final
        if final is None:
            return "answering…"
        if final.policy is None:
            words = "on the device; no cloud configured"
        else:
            verb = "escalated" if final.escalated else "kept on the device"
            words = f"{verb} ({final.policy}): {final.reason or 'no reason given'}"
            if final.endpoint and final.escalated:
                words += f" via {final.endpoint}"
        if final.fallback:
            words += f"; the device finished it: {final.fallback}"
        if self.retracted:
            words += f"; {self.retracted} characters taken back"
        if final.finish != "stop":
            words += f" [{final.finish}]"
        return words


@dataclass
class Transcript:
    """The turns of one conversation, oldest first."""

    turns: list[Turn] = field(default_factory=list)

    def ask(self, question: str, via: str = "") -> Turn:
        turn = Turn(question.strip(), via)
        self.turns.append(turn)
        return turn

    def history(self) -> list[tuple[str, str]]:
        """Finished exchanges with an answer, for the next prompt."""
        return [
            (t.question, t.answer.strip())
            for t in self.turns
            if t.final is not None and t.answer.strip()
        ]

    def clear(self) -> None:
        self.turns.clear()

    def as_text(self) -> str:
        """The whole conversation as plain text (copy, logs, tests)."""
        return "\n\n".join(
            f"You: {t.question}\n[{t.badge}] {t.answer.strip()}\n  {t.why()}" for t in self.turns
        )
