"""response_format and tools on the OpenAI wire format: the schema each request asks for,
the refusals, and tool calls in OpenAI's shape (no server, no model)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from edgecloud.common.structured import OutputSchema, request_schema
from edgecloud.http._protocol import (
    ChatRequest,
    HttpError,
    ResponseBuilder,
    generate_options,
    parse_request,
)
from edgecloud.types import Confidence, GenerationResult, Timings, ToolCall, Usage

ACTION = {
    "type": "object",
    "properties": {"action": {"enum": ["pick", "place"]}, "bay": {"type": "integer"}},
    "required": ["action", "bay"],
}
MOVE = {
    "type": "function",
    "function": {"name": "move", "parameters": ACTION, "description": "Move the arm."},
}
HALT = {"type": "function", "function": {"name": "halt"}}


def chat(**fields: Any) -> ChatRequest:
    raw = {"model": "m", "messages": [{"role": "user", "content": "go"}], **fields}
    req = parse_request("chat", json.dumps(raw).encode())
    assert isinstance(req, ChatRequest)
    return req


def schema_of(**fields: Any) -> Any:
    options = generate_options(chat(**fields), max_tokens=16, cap=64)
    schema = request_schema(options.get("schema"), options.get("tools"), options.get("tool_choice"))
    return schema.as_dict if schema is not None else None


def test_response_format_becomes_the_schema_option() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "act", "schema": ACTION, "strict": True}}
    assert schema_of(response_format=fmt) == ACTION
    assert schema_of(response_format={"type": "json_object"}) == {"type": "object"}
    assert schema_of(response_format={"type": "text"}) is None
    assert schema_of() is None
    comp = parse_request(
        "completion",
        json.dumps(
            {"model": "m", "prompt": "x", "response_format": {"type": "json_object"}}
        ).encode(),
    )
    assert generate_options(comp, max_tokens=16, cap=64)["schema"] == {"type": "object"}


def test_tools_become_one_schema_for_a_call_of_one_of_them() -> None:
    union = OutputSchema.of(schema_of(tools=[MOVE, HALT]))
    assert union.parse('{"name": "halt", "arguments": {}}')["name"] == "halt"
    forced = schema_of(
        tools=[MOVE, HALT], tool_choice={"type": "function", "function": {"name": "move"}}
    )
    assert forced["properties"]["arguments"] == ACTION
    assert schema_of(tools=[MOVE], tool_choice="none") is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tools": [MOVE], "response_format": {"type": "json_object"}}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [MOVE], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice"),
    ],
)  # fmt: skip
def test_inconsistent_structured_requests_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(HttpError) as info:
        schema_of(**fields)
    assert info.value.status == 400 and info.value.param == param


def test_a_conversation_with_tool_calls_and_results_reads_as_chat() -> None:
    req = chat(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "move", "arguments": '{"action": "pick", "bay": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ])  # fmt: skip
    msgs = [m.to_chat() for m in req.messages]
    assert msgs[1].role == "assistant"
    assert json.loads(msgs[1].content) == {
        "name": "move",
        "arguments": {"action": "pick", "bay": 2},
    }
    assert (msgs[2].role, msgs[2].content) == ("user", "Tool result (call_1): done")


def result(text: str, parsed: Any, reason: str = "stop") -> GenerationResult:
    calls = (ToolCall(parsed["name"], parsed["arguments"]),) if parsed else ()
    return GenerationResult(
        text=text, finish_reason=reason, usage=Usage(5, 3),  # type: ignore[arg-type]
        confidence=Confidence(-0.5, -1.0, math.nan, 3), source="local",
        timings=Timings(0.1, 0.3, 10.0), model="m", parsed=parsed, tool_calls=calls,
    )  # fmt: skip


CALL = '{"name": "move", "arguments": {"action": "pick", "bay": 2}}'


def test_a_tool_call_answer_is_returned_as_tool_calls() -> None:
    builder = ResponseBuilder("chat", "m", logprobs=None, tools=True)
    whole = builder.whole([], result(CALL, json.loads(CALL)))
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "move"
    assert json.loads(call["function"]["arguments"]) == {"action": "pick", "bay": 2}


def test_a_streamed_tool_call_comes_whole_before_the_finish() -> None:
    from edgecloud.types import Chunk

    builder = ResponseBuilder("chat", "m", logprobs=None, tools=True)
    assert builder.chunk(Chunk('{"name"', 1, -0.1, 0.5, "local", 0)) is None
    delta, last = builder.tail(result(CALL, json.loads(CALL)))
    (call,) = delta["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"]["name"] == "move"
    assert last["choices"][0]["finish_reason"] == "tool_calls"
    cut, last = builder.tail(result('{"name": "mo', None, "length"))
    assert cut["choices"][0]["delta"] == {"content": '{"name": "mo'}
    assert last["choices"][0]["finish_reason"] == "length"
