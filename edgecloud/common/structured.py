"""JSON-schema-constrained answers: the schema's canonical text, the final check, tools.

The grammar that keeps each token on the schema lives in the backends (llama.cpp's
GBNF on the device, xgrammar in the cloud); this module is what both sides share:
turning what the caller gave (a dict or a pydantic model class) into one compact
JSON text (what ``SamplingParams.json_schema`` and the wire carry), refusing a schema
that is not valid JSON Schema before any token, validating the finished answer, and
folding OpenAI-style tools into one schema (a tool call is JSON that names one tool
and gives its arguments).

``jsonschema`` is imported only when a dict schema is checked (it comes with the
``device`` extra); a pydantic model validates itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from edgecloud.errors import InvalidRequestError, StructuredOutputError
from edgecloud.types import ToolCall

__all__ = [
    "JSON_OBJECT_SCHEMA",
    "OutputSchema",
    "parse_tool_call",
    "request_schema",
    "tool_call_schema",
]

JSON_OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object"}
"""Any JSON object: OpenAI's ``response_format={"type": "json_object"}``."""


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """A schema an answer must follow: its canonical JSON text and how to check a result.

    Build it with :meth:`of`; ``text`` is what ``SamplingParams.json_schema`` holds.
    """

    text: str
    model: type[BaseModel] | None = None
    tools: bool = False
    """The schema is that of a tool call (:func:`tool_call_schema`)."""

    @classmethod
    def of(cls, schema: Mapping[str, Any] | type[BaseModel] | OutputSchema) -> OutputSchema:
        """The schema of a dict (JSON Schema) or a pydantic model class.

        Raises:
            InvalidRequestError: not a dict or model class, not JSON-serializable, or not
                a valid JSON Schema.
        """
        if isinstance(schema, OutputSchema):
            return schema
        model: type[BaseModel] | None = None
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            model = schema
            as_dict: Any = schema.model_json_schema()
        elif isinstance(schema, Mapping):
            as_dict = dict(schema)
        else:
            raise InvalidRequestError(
                f"schema must be a JSON-schema dict or a pydantic model class, not "
                f"{type(schema).__name__}"
            )
        try:
            # Keys keep their order: the grammars emit properties in schema order, and
            # order steers generation (a tool call's name before its arguments).
            text = json.dumps(as_dict, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"schema is not JSON-serializable: {exc}") from exc
        except RecursionError:
            raise InvalidRequestError("schema is nested too deeply") from None
        if model is None:
            try:
                _validator(as_dict)  # refuses a malformed schema now, not after the answer
            except RecursionError:  # jsonschema checks a schema recursively, many frames a level
                raise InvalidRequestError("schema is nested too deeply") from None
        return cls(text, model)

    @property
    def as_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.text)
        return value

    def parse(self, answer: str) -> Any:
        """The answer's value, checked against the schema (a model instance for a model).

        Raises:
            StructuredOutputError: the answer is not JSON, or does not follow the schema.
        """
        try:
            value = json.loads(answer)
        except ValueError as exc:
            raise StructuredOutputError(
                f"the answer is not complete JSON ({exc}); was it cut by max_tokens?", text=answer
            ) from exc
        if self.model is not None:
            try:
                return self.model.model_validate(value)
            except ValidationError as exc:
                raise StructuredOutputError(
                    f"the answer does not follow the schema: {_first_line(str(exc))}", text=answer
                ) from exc
        error = next(iter(_validator(self.as_dict).iter_errors(value)), None)
        if error is not None:
            raise StructuredOutputError(
                f"the answer does not follow the schema: {error.message}", text=answer
            )
        return value


def _validator(schema: Mapping[str, Any]) -> Any:
    """A jsonschema validator for ``schema`` (its draft from ``$schema``, else 2020-12).

    Raises:
        InvalidRequestError: the schema itself is invalid.
    """
    try:
        import jsonschema
        from jsonschema.exceptions import SchemaError
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InvalidRequestError(
            "a dict schema needs jsonschema: pip install 'edgecloud[device]'"
        ) from exc
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequestError(f"invalid JSON schema: {exc.message}") from exc
    return cls(schema)


def _first_line(text: str) -> str:
    return " ".join(text.split("\n")[:2])


def tool_call_schema(
    tools: Sequence[Mapping[str, Any]], choice: str | Mapping[str, Any] | None = "auto"
) -> dict[str, Any]:
    """The schema of one call of one of ``tools`` (OpenAI's tool objects): an object with
    the tool's ``name`` (a constant) and its ``arguments`` (its parameters' schema); one
    ``anyOf`` branch per tool, so the grammar ties each name to its own arguments.

    ``choice`` narrows it: ``"auto"``/``"required"``/None allow any tool (a constrained
    answer always calls one: prose is not a choice under a grammar), or
    ``{"type": "function", "function": {"name": ...}}`` forces that tool.

    Raises:
        InvalidRequestError: no tools, a tool without a name, an unknown forced tool,
            or ``tool_choice="none"`` (nothing to constrain: leave tools out).
    """
    branches: dict[str, dict[str, Any]] = {}
    for tool in tools:
        fn = tool.get("function") if tool.get("type", "function") == "function" else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequestError(
                'each tool must be {"type": "function", "function": {"name": ..., '
                '"parameters": {...}}}'
            )
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise InvalidRequestError(f"tool {fn['name']!r}: parameters must be a JSON schema")
        branches[fn["name"]] = {
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": dict(params)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
    if not branches:
        raise InvalidRequestError("tools must list at least one tool")
    if choice == "none":
        raise InvalidRequestError('tool_choice="none" leaves nothing to constrain: drop tools')
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if name not in branches:
            raise InvalidRequestError(f"tool_choice names no listed tool: {name!r}")
        return branches[name]
    if choice not in (None, "auto", "required"):
        raise InvalidRequestError(
            f"tool_choice must be 'auto', 'required', 'none' or a function, not {choice!r}"
        )
    if len(branches) == 1:
        return next(iter(branches.values()))
    return {"anyOf": list(branches.values())}


def request_schema(
    schema: Mapping[str, Any] | type[BaseModel] | None,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
) -> OutputSchema | None:
    """The schema a request's answer must follow: ``schema``, or one call of one of
    ``tools`` (unless ``tool_choice`` is ``"none"``); None for free text.

    Raises:
        InvalidRequestError: both a schema and tools, a ``tool_choice`` without tools,
            or a bad schema or tool.
    """
    if tools and tool_choice != "none":
        if schema is not None:
            raise InvalidRequestError("give tools or a schema, not both")
        return replace(OutputSchema.of(tool_call_schema(tools, tool_choice)), tools=True)
    if tool_choice not in (None, "none", "auto"):
        raise InvalidRequestError("tool_choice needs tools")
    return OutputSchema.of(schema) if schema is not None else None


def parse_tool_call(value: Any) -> ToolCall:
    """The :class:`ToolCall` in a value that follows :func:`tool_call_schema`."""
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise StructuredOutputError("the answer is not a tool call", text=json.dumps(value))
    arguments = value.get("arguments")
    return ToolCall(value["name"], arguments if isinstance(arguments, Mapping) else {})
