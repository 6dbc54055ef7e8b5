"""Chat prompts: the model's own Jinja2 template, or the documented plain one.

The plain template, used when a GGUF carries no ``tokenizer.chat_template``
(base models such as the embedded Gemma 3 270M), renders::

    {system message}\\n\\n          (only when there is a system message)
    User: {content}\\n
    Assistant: {content}\\n
    ...
    Assistant:                     (the model continues from here)

and adds the stop sequence ``"\\nUser:"`` so the model does not write the
user's next turn. Templates from model files are untrusted and are rendered in
Jinja2's immutable sandbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgecloud.errors import ConfigError, InvalidRequestError
from edgecloud.types import ChatMessage

__all__ = ["PLAIN_STOP", "ChatFormatter", "RenderedPrompt", "render_plain"]

PLAIN_STOP = "\nUser:"


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    text: str
    stop: tuple[str, ...]
    special: bool
    """Whether the text contains special-token markup to be parsed as tokens."""


def render_plain(messages: Sequence[ChatMessage]) -> str:
    parts: list[str] = []
    for msg in messages:
        if msg.role == "system":
            parts.append(f"{msg.content}\n\n")
        elif msg.role == "user":
            parts.append(f"User: {msg.content}\n")
        else:
            parts.append(f"Assistant: {msg.content}\n")
    parts.append("Assistant:")
    return "".join(parts)


class ChatFormatter:
    """Renders chat messages into one prompt string for a given model.

    Args:
        template: ``"plain"``, or Jinja2 source (a model's ``tokenizer.chat_template``
            or one from config).
        bos_token: text of the model's BOS token, passed to the template.
        eos_token: text of the model's EOS token, passed to the template.
    """

    def __init__(self, template: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.is_plain = template == "plain"
        self._bos = bos_token
        self._eos = eos_token
        self._template: Any = None
        if not self.is_plain:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_exception
            try:
                self._template = env.from_string(template)
            except TemplateError as exc:
                raise ConfigError(f"chat_template is not a valid Jinja2 template: {exc}") from exc

    def render(self, messages: Sequence[ChatMessage]) -> RenderedPrompt:
        if not messages:
            raise InvalidRequestError("messages must not be empty")
        if self.is_plain:
            return RenderedPrompt(render_plain(messages), (PLAIN_STOP,), special=False)
        from jinja2 import TemplateError

        try:
            text = self._template.render(
                messages=[m.model_dump() for m in messages],
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except TemplateError as exc:
            raise InvalidRequestError(f"the chat template rejected the messages: {exc}") from exc
        return RenderedPrompt(text, (), special=True)


def _raise_template_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)
