"""Structured output through the OpenAI endpoint, driven by the official ``openai`` client:
``response_format`` (json_schema, json_object) and ``tools`` on the real model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from edgecloud import AsyncClient
from edgecloud.backends import LlamaCppBackend
from edgecloud.http import Server
from tests.integration.test_http import settings
from tests.integration.test_structured_device import ASK

pytestmark = pytest.mark.model

ACTION = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ["pick", "place", "wait"]},
        "bay": {"type": "integer", "minimum": 1, "maximum": 20},
    },
    "required": ["action", "bay"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def oai(backend: LlamaCppBackend, model_cache: Path) -> Iterator[tuple[openai.OpenAI, str]]:
    with Server(settings(model_cache), client=AsyncClient(backend)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        yield client, server.state.model_name


def test_response_format_json_schema(oai: tuple[openai.OpenAI, str]) -> None:
    client, model = oai
    fmt = {"type": "json_schema", "json_schema": {"name": "act", "schema": ACTION, "strict": True}}
    reply = client.chat.completions.create(
        model=model,
        messages=ASK,
        response_format=fmt,
        max_tokens=24,  # type: ignore[arg-type]
    )
    value = json.loads(reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert value["action"] in {"pick", "place", "wait"} and 1 <= value["bay"] <= 20
    streamed = client.chat.completions.create(
        model=model, messages=ASK, response_format=fmt, max_tokens=24, stream=True,  # type: ignore[arg-type]
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert json.loads(text) == value  # greedy: the same answer


def test_response_format_json_object_and_a_refused_schema(oai: tuple[openai.OpenAI, str]) -> None:
    client, model = oai
    reply = client.chat.completions.create(
        model=model, messages=ASK, response_format={"type": "json_object"}, max_tokens=32
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens: still the start of an object
        assert (reply.choices[0].message.content or "").lstrip().startswith("{")
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}},
    }
    with pytest.raises(openai.BadRequestError, match="grammar compiler"):
        client.chat.completions.create(model=model, messages=ASK, response_format=bad)  # type: ignore[arg-type]


def test_tools_return_a_tool_call(oai: tuple[openai.OpenAI, str]) -> None:
    client, model = oai
    tools = [
        {"type": "function", "function": {"name": "move_arm", "parameters": ACTION}},
        {"type": "function", "function": {"name": "halt", "parameters": {"type": "object"}}},
    ]
    reply = client.chat.completions.create(
        model=model, messages=ASK, tools=tools, max_tokens=40,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "move_arm"}},
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "move_arm"  # type: ignore[union-attr]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert args["action"] in {"pick", "place", "wait"} and 1 <= args["bay"] <= 20
