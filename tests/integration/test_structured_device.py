"""Schema-constrained answers on the device's real model (llama.cpp grammars)."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from edgecloud import AsyncClient, Client
from edgecloud.backends import LlamaCppBackend
from edgecloud.errors import InvalidRequestError, StructuredOutputError
from edgecloud.types import ChatMessage, SamplingParams

pytestmark = pytest.mark.model

ASK = [
    {
        "role": "user",
        "content": "The robot must pick the box in bay 3. Answer as JSON with keys action and bay.",
    }
]
ACTION = {
    "type": "object",
    "properties": {"action": {"enum": ["pick", "place", "wait"]}, "bay": {"type": "integer"}},
    "required": ["action", "bay"],
}


MESSAGES = [ChatMessage.model_validate(m) for m in ASK]


class Action(BaseModel):
    action: Literal["pick", "place", "wait"]
    bay: int = Field(ge=1, le=20)


def test_greedy_answer_follows_the_schema_and_keeps_its_signals(backend: LlamaCppBackend) -> None:
    free = Client(backend).generate(ASK, max_tokens=12)
    assert not free.text.lstrip().startswith("{")  # unconstrained, this model writes prose
    result = Client(backend).generate(ASK, schema=ACTION, max_tokens=24)
    assert result.finish_reason == "stop"
    assert json.loads(result.text) == result.parsed
    assert result.parsed["action"] in {"pick", "place", "wait"}
    assert isinstance(result.parsed["bay"], int)
    conf = result.confidence
    assert conf.tokens == result.usage.completion_tokens > 3
    assert math.isfinite(conf.mean_logprob) and conf.mean_logprob < 0
    assert math.isfinite(conf.mean_entropy) and conf.mean_entropy > 0


def test_sampled_answer_to_a_pydantic_model(backend: LlamaCppBackend) -> None:
    for seed in (1, 2):
        result = Client(backend).generate(
            ASK, schema=Action, max_tokens=24, temperature=0.7, seed=seed
        )
        assert isinstance(result.parsed, Action)  # the grammar kept bay within 1..20


def test_async_client_takes_a_schema(backend: LlamaCppBackend) -> None:
    async def main() -> object:
        return (await AsyncClient(backend).generate(ASK, schema=Action, max_tokens=24)).parsed

    assert isinstance(asyncio.run(main()), Action)


def test_an_answer_cut_by_max_tokens_raises(backend: LlamaCppBackend) -> None:
    with pytest.raises(StructuredOutputError, match="max_tokens") as info:
        Client(backend).generate(ASK, schema=ACTION, max_tokens=3)
    assert info.value.text.startswith("{")


def test_a_schema_the_grammar_compiler_cannot_handle_is_refused_before_any_token(
    backend: LlamaCppBackend,
) -> None:
    # Valid JSON Schema, but llama.cpp's converter has no rule for "not".
    with pytest.raises(InvalidRequestError, match="grammar compiler cannot handle"):
        Client(backend).stream(ASK, schema={"not": {"type": "string"}})
    with pytest.raises(InvalidRequestError, match="grammar compiler"):
        backend.stream(
            MESSAGES, SamplingParams(json_schema='{"$ref": "https://example.com/s.json"}')
        )


def test_the_backend_continues_a_prefix_inside_the_grammar(backend: LlamaCppBackend) -> None:
    params = SamplingParams(json_schema=json.dumps(ACTION), max_tokens=20)
    prefix = '{"action": "place", "bay": '
    text = "".join(
        e.text for e in backend.stream(MESSAGES, params, prefix=prefix) if hasattr(e, "text")
    )
    assert json.loads(prefix + text)["action"] == "place"
    with pytest.raises(InvalidRequestError, match="prefix does not follow"):
        backend.stream(MESSAGES, params, prefix='{"verb": ')
    # Text the cloud wrote (its grammar allows a newline and indentation) parses here too.
    indented = '{\n  "action": "wait",\n  "bay": '
    text = "".join(
        e.text for e in backend.stream(MESSAGES, params, prefix=indented) if hasattr(e, "text")
    )
    assert json.loads(indented + text)["action"] == "wait"


def test_a_stream_cut_by_max_tokens_ends_like_openai(backend: LlamaCppBackend) -> None:
    with Client(backend).stream(ASK, schema=ACTION, max_tokens=3) as stream:
        text = "".join(c.text for c in stream)
    assert stream.result.finish_reason == "length"
    assert stream.result.parsed is None and stream.result.text == text


def test_tools_make_the_answer_a_tool_call(backend: LlamaCppBackend) -> None:
    tools = [
        {"type": "function", "function": {"name": "move_arm", "parameters": ACTION}},
        {"type": "function", "function": {"name": "halt", "parameters": {"type": "object"}}},
    ]
    result = Client(backend).generate(ASK, tools=tools, max_tokens=40)
    (call,) = result.tool_calls
    assert call.name in {"move_arm", "halt"}
    if call.name == "move_arm":
        assert call.arguments["action"] in {"pick", "place", "wait"}
    assert json.loads(call.arguments_json) == call.arguments
    free = Client(backend).generate(ASK, tools=tools, tool_choice="none", max_tokens=4)
    assert free.tool_calls == () and free.parsed is None


def test_strings_hold_no_raw_control_characters(backend: LlamaCppBackend) -> None:
    # JSON forbids a raw newline inside a string; llama-cpp-python's converter allowed it.
    params = SamplingParams(
        json_schema='{"type": "object", "properties": {"note": {"type": "string"}}}'
    )
    with pytest.raises(InvalidRequestError, match="prefix does not follow"):
        backend.stream(MESSAGES, params, prefix='{"note": "line one\nline two')
    backend.stream(MESSAGES, params, prefix='{"note": "line one\\nline two').close()
