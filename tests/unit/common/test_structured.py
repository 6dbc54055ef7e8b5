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


def test_dict_schema_text_is_canonical_and_checks_answers() -> None:
    schema = OutputSchema.of(ACTION)
    assert schema.text == json.dumps(ACTION, sort_keys=True, separators=(",", ":"))
    assert OutputSchema.of(dict(reversed(list(ACTION.items())))).text == schema.text
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
