"""What the knowledge base is searched with, and how passages go into a prompt."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgecloud.cloud._prompting import (
    apply_format,
    question_of,
    split_last_question,
    with_question,
)
from edgecloud.config import CloudModelConfig
from edgecloud.types import ChatMessage, Passage


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


def test_split_before_the_last_question() -> None:
    prompt = "Q: a?\nA: 1\nQ: b?\nA:"
    assert split_last_question(prompt) == ("Q: a?\nA: 1\n", "Q: b?\nA:")
    assert split_last_question("no question") == ("", "no question")


def test_a_new_question_replaces_only_the_last_question() -> None:
    prompt = "Q: a?\nA: 1\nQ:  Kestrel payload? \nA:"
    asked = with_question(prompt, "How fast is the Otter?")
    assert asked == "Q: a?\nA: 1\nQ:  How fast is the Otter?\nA:"
    assert question_of(asked) == "How fast is the Otter?"
    assert with_question("How fast is the Otter?", "Otter colour?") == "Otter colour?"


def test_formats_place_passages_around_the_prompt_or_before_the_question() -> None:
    passages = [Passage("Kestrel payload: 22 kg", "kestrel.md", 0.8),
                Passage("Heron payload: 7 kg", "heron.md", 0.5)]  # fmt: skip
    prompt = "Q: a?\nA: 1\nQ: Kestrel payload?\nA:"
    whole = apply_format("Context: {context}\n\n{prompt}", prompt, passages)
    assert whole == f"Context: Kestrel payload: 22 kg\nHeron payload: 7 kg\n\n{prompt}"
    late = apply_format("{head}Context: {context}\n{tail}", prompt, passages[:1])
    assert late == "Q: a?\nA: 1\nContext: Kestrel payload: 22 kg\nQ: Kestrel payload?\nA:"


def test_the_default_format_reads_a_q_a_prompt_and_leaves_others_whole() -> None:
    passage = [Passage("Kestrel payload: 22 kg", "kestrel.md", 0.8)]
    default = CloudModelConfig().prompt_format
    read = apply_format(default, "Q: a?\nA: 1\nQ: Kestrel payload?\nA:", passage)
    assert read.startswith("Answer from the context.")
    assert read.endswith("Context: Kestrel payload: 22 kg\nQ: Kestrel payload?\nA:")
    assert "Q: a?" not in read  # the device's few-shot lines give way to the reading examples
    # A tool-calling prompt (no Q: line) keeps its own instructions: passages, then it.
    tools = 'Call one tool as JSON.\nCommand: go to the cold store\nCall: {"name": '
    assert apply_format(default, tools, passage) == f"Context: Kestrel payload: 22 kg\n\n{tools}"
    # A structured request keeps its few-shot lines too: they show the output's form.
    qa_tools = 'Q: stop\nA:\n{"name": "stop"}\nQ: go to the cold store\nA:\n'
    kept = apply_format(default, qa_tools, passage, structured=True)
    assert kept == f"Context: Kestrel payload: 22 kg\n\n{qa_tools}"


@pytest.mark.parametrize("template", ["{prompt}", "Context: {context}", "{context} {prompt} {x}",
                                      "{context} {prompt} {"])  # fmt: skip
def test_bad_prompt_formats_fail_at_start(template: str) -> None:
    with pytest.raises(ValidationError, match="prompt_format"):
        CloudModelConfig(prompt_format=template)
