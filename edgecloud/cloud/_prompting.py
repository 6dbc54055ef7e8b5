"""How a request's question is found and how knowledge goes into its prompt (pure).

A base model answers few-shot Q/A prompts far better than chat prompts, and such a
prompt carries example questions before the real one: the real question is the
last ``Q:`` line. ``cloud.model.prompt_format`` may place the passages around the
whole prompt (``{prompt}``) or right before that last question (``{head}`` is the
text before the last ``Q:`` line, ``{tail}`` that line and what follows).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgecloud.types import ChatMessage, Passage

if TYPE_CHECKING:
    from edgecloud.cloud._backend import CloudRequest

__all__ = [
    "apply_format", "question_of", "request_text", "split_last_question", "with_question",
]  # fmt: skip

_Q_LINE = re.compile(r"^[ \t]*Q:[ \t]*(.*)$", re.MULTILINE)


def question_of(prompt: str | Sequence[ChatMessage]) -> str:
    """What a request asks, as the knowledge base is searched with it.

    Chat: the last user message. A raw prompt: the text of its last ``Q:`` line,
    else the whole prompt.
    """
    if not isinstance(prompt, str):
        users = [m.content for m in prompt if m.role == "user"]
        return users[-1] if users else ""
    found = _Q_LINE.findall(prompt)
    return str(found[-1]).strip() if found else prompt.strip()


def with_question(prompt: str, question: str) -> str:
    """``prompt`` asking ``question`` instead of its own question.

    The text of the last ``Q:`` line is replaced and everything around it (few-shot
    examples, the ``A:`` cue) is kept, so a question the cloud wrote reads as a
    device would send it. A prompt without a ``Q:`` line is its question as a whole
    (see :func:`question_of`), so it becomes ``question``.
    """
    last = _last_question(prompt)
    if last is None:
        return question
    return prompt[: last.start(1)] + question + prompt[last.end(1) :]


def split_last_question(text: str) -> tuple[str, str]:
    """``(head, tail)``: the text before the last ``Q:`` line, and the rest ("" and
    the whole text when there is no ``Q:`` line)."""
    last = _last_question(text)
    if last is None:
        return "", text
    return text[: last.start()], text[last.start() :]


def _last_question(text: str) -> re.Match[str] | None:
    last = None
    for last in _Q_LINE.finditer(text):  # noqa: B007 - we want the last match
        pass
    return last


PLAIN_FORMAT = "Context: {context}\n\n{prompt}"
"""What a template that splits the prompt at its last ``Q:`` line ({head}, {tail}) falls
back to for a prompt without one (a tool-calling prompt, a chat, free text): the
passages, then the prompt as it is."""


def apply_format(
    template: str, prompt: str, passages: Sequence[Passage], *, structured: bool = False
) -> str:
    """``prompt`` with ``passages`` (one per line) put in by ``template``.

    A template without ``{prompt}`` is written for few-shot Q/A answers in words; a
    prompt with no ``Q:`` line, or a ``structured`` request (a JSON schema or tools:
    its few-shot lines show the output's form), gets :data:`PLAIN_FORMAT` instead, so
    its own instructions and examples are never replaced by the template's.
    """
    if "{prompt}" not in template and (structured or _last_question(prompt) is None):
        template = PLAIN_FORMAT
    head, tail = split_last_question(prompt)
    context = "\n".join(p.text for p in passages)
    return template.format(context=context, prompt=prompt, head=head, tail=tail)


def request_text(template: str, request: CloudRequest) -> str:
    """A request's prompt as a cloud model sees it, before the assistant prefix: chat
    rendered with the plain template, retrieved passages put in by ``template``
    (``cloud.model.prompt_format``; see :func:`apply_format`). Every backend renders
    prompts this way."""
    from edgecloud.common.chat import render_plain

    text = request.prompt if isinstance(request.prompt, str) else render_plain(request.prompt)
    if request.passages:
        text = apply_format(
            template, text, request.passages, structured=request.params.json_schema is not None
        )
    return text
