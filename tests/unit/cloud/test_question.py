"""What the knowledge base is searched with, per request shape."""

from __future__ import annotations

from edgecloud.cloud._service import question_of
from edgecloud.types import ChatMessage


def test_chat_uses_the_last_user_message() -> None:
    msgs = [ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="What is the Heron?"),
            ChatMessage(role="assistant", content="A robot."),
            ChatMessage(role="user", content="How much can it carry?")]  # fmt: skip
    assert question_of(msgs) == "How much can it carry?"
    assert question_of([ChatMessage(role="system", content="x")]) == ""


def test_few_shot_prompt_uses_the_last_q_line() -> None:
    prompt = "Q: What is the capital of France?\nA: Paris\nQ: Kestrel payload?\nA:"
    assert question_of(prompt) == "Kestrel payload?"


def test_plain_prompt_is_the_question() -> None:
    assert question_of("  How fast is the Otter?\n") == "How fast is the Otter?"
