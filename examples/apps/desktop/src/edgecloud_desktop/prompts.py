"""The prompt sent for a question.

The embedded model (Gemma 3 270M) is a base model without a chat template: it continues
text. A few short questions with short answers in front of the conversation make it
answer the next question the same way, on one line, so generation stops at the newline.
The web app (examples/apps/web) uses the same examples, so both apps get the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence

FEW_SHOT: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris."),
    ("How many legs does a spider have?", "Eight."),
    ("What do bees make?", "Honey."),
)
STOP: tuple[str, ...] = ("\n",)
"""One answer is one line: the model's next ``Q:`` starts after a newline."""
HISTORY_TURNS = 4
"""Earlier exchanges sent along with a question, so that follow-ups have context while
the prompt stays far below the model's context window."""


def qa_prompt(
    question: str,
    history: Sequence[tuple[str, str]] = (),
    *,
    shots: Sequence[tuple[str, str]] = FEW_SHOT,
    keep: int = HISTORY_TURNS,
) -> str:
    """``Q: ...\\nA: ...`` lines: the examples, the last ``keep`` exchanges, then the
    question with an open ``A:``.

    Newlines inside a question or an earlier answer are folded into spaces: a newline
    would end the line the model is asked to continue (and is the stop sequence).

    Examples:
        >>> print(qa_prompt("What is 2+2?", shots=[("Capital of Italy?", "Rome.")]))
        Q: Capital of Italy?
        A: Rome.
        Q: What is 2+2?
        A:
    """
    question = _one_line(question)
    if not question:
        raise ValueError("the question is empty")
    recent = list(history)[-keep:] if keep > 0 else []
    lines = [f"Q: {_one_line(q)}\nA: {_one_line(a)}" for q, a in [*shots, *recent]]
    return "\n".join([*lines, f"Q: {question}\nA:"])


def _one_line(text: str) -> str:
    return " ".join(text.split())
