"""The device's schema-to-GBNF step: the rules put back as llama.cpp writes them, and small
integer ranges written out (no model needed)."""

from __future__ import annotations

import json

import pytest

from edgecloud.backends._grammar import _small_int_ranges, schema_to_gbnf
from edgecloud.errors import InvalidRequestError


def test_bounded_integers_become_the_enum_of_their_values() -> None:
    schema = {
        "type": "object",
        "properties": {
            "bay": {"type": "integer", "minimum": 1, "maximum": 5, "description": "which"},
            "n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3.5},
            "step": {"type": "integer", "minimum": 0, "maximum": 10, "multipleOf": 5},
            "wide": {"type": "integer", "minimum": 0, "maximum": 100_000},
            "open": {"type": "integer", "minimum": 0},
        },
    }
    props = _small_int_ranges(schema)["properties"]
    assert props["bay"] == {"description": "which", "enum": [1, 2, 3, 4, 5]}
    assert props["n"] == {"enum": [1, 2, 3]}
    assert props["step"] == {"enum": [0, 5, 10]}
    assert props["wide"] == schema["properties"]["wide"]  # type: ignore[index]
    assert props["open"] == schema["properties"]["open"]  # type: ignore[index]


def test_the_gbnf_keeps_json_strings_strict_and_allows_indentation() -> None:
    bay = {"type": "integer", "minimum": 1, "maximum": 3}
    schema = {"type": "object", "properties": {"bay": bay, "note": {"type": "string"}}}
    gbnf = schema_to_gbnf(json.dumps(schema))
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    assert rules["char"].startswith(r'[^"\\\x7F\x00-\x1F]')
    assert rules["space"] == r'| " " | "\n" [ \t]{0,20}'
    assert '"1" | "2" | "3"' in gbnf


def test_a_schema_the_converter_has_no_rule_for_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="grammar compiler cannot handle"):
        schema_to_gbnf(json.dumps({"not": {"type": "string"}}))
