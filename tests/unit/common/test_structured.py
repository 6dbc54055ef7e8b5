"""Output schemas: canonical text, refusal of bad schemas, the final check, tool calls."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel

from edgecloud.common.structured import OutputSchema, parse_tool_call, tool_call_schema
from edgecloud.errors import InvalidRequestError, StructuredOutputError
from edgecloud.types import SamplingParams

ACTION = {
    "type": "object",
    "properties": {"action": {"enum": ["pick", "place"]}, "bay": {"type": "integer"}},
    "required": ["action", "bay"],
}


class Action(BaseModel):
    action: Literal["pick", "place"]
    bay: int


def test_dict_schema_text_is_compact_and_checks_answers() -> None:
    schema = OutputSchema.of(ACTION)
    assert schema.text == json.dumps(ACTION, separators=(",", ":"))
    # property order is kept: it is the order the grammar writes them in
    assert list(json.loads(schema.text)["properties"]) == ["action", "bay"]
    assert schema.parse('{"action": "pick", "bay": 3}') == {"action": "pick", "bay": 3}
    with pytest.raises(StructuredOutputError, match="does not follow") as info:
        schema.parse('{"action": "drop", "bay": 3}')
    assert info.value.text == '{"action": "drop", "bay": 3}'
    with pytest.raises(StructuredOutputError, match="max_tokens"):
        schema.parse('{"action": "pi')


def test_model_schema_parses_to_an_instance() -> None:
    schema = OutputSchema.of(Action)
    assert json.loads(schema.text)["required"] == ["action", "bay"]
    assert schema.parse('{"action":"place","bay":2}') == Action(action="place", bay=2)
    with pytest.raises(StructuredOutputError):
        schema.parse('{"action":"place"}')


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not a schema", "dict or a pydantic model"),
        ({"type": 12}, "invalid JSON schema"),
        ({"type": "object", "minProperties": -1}, "invalid JSON schema"),
        ({"enum": [float("nan")]}, "not JSON-serializable"),
    ],
)
def test_bad_schemas_are_refused_up_front(bad: object, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        OutputSchema.of(bad)  # type: ignore[arg-type]


def test_sampling_params_take_only_a_json_object_schema() -> None:
    assert SamplingParams(json_schema='{"type":"object"}').json_schema == '{"type":"object"}'
    for bad in ("[1]", "{nope"):
        with pytest.raises(ValueError, match="json_schema"):
            SamplingParams(json_schema=bad)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "move",
            "parameters": {"type": "object", "properties": {"bay": {"type": "integer"}}},
        },
    },
    {"type": "function", "function": {"name": "stop"}},
]


def test_tool_call_schema_ties_each_name_to_its_arguments() -> None:
    union = OutputSchema.of(tool_call_schema(TOOLS))
    call = union.parse('{"name": "move", "arguments": {"bay": 4}}')
    assert parse_tool_call(call).arguments == {"bay": 4}
    assert parse_tool_call(call).arguments_json == '{"bay":4}'
    with pytest.raises(StructuredOutputError):
        union.parse('{"name": "move", "arguments": {"bay": "four"}}')
    with pytest.raises(StructuredOutputError):
        union.parse('{"name": "fly", "arguments": {}}')
    forced = tool_call_schema(TOOLS, {"type": "function", "function": {"name": "stop"}})
    assert forced["properties"]["name"] == {"const": "stop"}


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([], "auto", "at least one"),
        ([{"type": "function", "function": {}}], "auto", "each tool"),
        (TOOLS, "none", "none"),
        (TOOLS, {"type": "function", "function": {"name": "fly"}}, "names no listed tool"),
        (TOOLS, "sometimes", "tool_choice must be"),
    ],
)
def test_bad_tools_are_refused(
    tools: list[dict[str, object]], choice: object, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        tool_call_schema(tools, choice)  # type: ignore[arg-type]


def test_a_backend_without_a_grammar_engine_refuses_a_schema_before_any_token() -> None:
    from edgecloud import Client
    from tests.fakes import ScriptedBackend

    backend = ScriptedBackend()
    with pytest.raises(InvalidRequestError, match="cannot constrain"):
        Client(backend).stream("x", schema=ACTION)
    with pytest.raises(InvalidRequestError, match="invalid JSON schema"):
        Client(backend).stream("x", schema={"type": 12})


def test_request_schema_picks_the_schema_or_the_tools() -> None:
    from edgecloud.common.structured import request_schema

    assert request_schema(None, None, None) is None
    assert request_schema(ACTION, None, "auto") == OutputSchema.of(ACTION)
    tools = request_schema(None, TOOLS, None)
    assert tools is not None and tools.tools and "anyOf" in tools.as_dict
    assert request_schema(ACTION, TOOLS, "none") == OutputSchema.of(ACTION)
    with pytest.raises(InvalidRequestError, match="not both"):
        request_schema(ACTION, TOOLS, "auto")
    with pytest.raises(InvalidRequestError, match="needs tools"):
        request_schema(None, None, "required")


def test_a_result_with_a_parsed_model_is_json_ready() -> None:
    from edgecloud.types import Confidence, GenerationResult, Timings, ToolCall, Usage

    result = GenerationResult(
        text='{"action":"pick","bay":2}', finish_reason="stop", usage=Usage(3, 9),
        confidence=Confidence(-0.1, -0.5, 0.3, 9), source="local", timings=Timings(0.1, 0.2, 50.0),
        model="m", parsed=Action(action="pick", bay=2), tool_calls=(ToolCall("move", {"bay": 2}),),
    )  # fmt: skip
    out = result.to_dict()
    assert out["parsed"] == {"action": "pick", "bay": 2}
    assert list(out["tool_calls"]) == [{"name": "move", "arguments": {"bay": 2}}]
    json.dumps(out)
