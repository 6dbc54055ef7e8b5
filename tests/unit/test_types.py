import math

import pytest
from pydantic import ValidationError

from edgecloud.types import ChatMessage, Confidence, SamplingParams


@pytest.mark.parametrize(
    "field,value",
    [("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 10**12), ("temperature", -0.1),
     ("top_p", 0.0), ("top_p", 1.5), ("seed", -3), ("stop", ("",))],
)  # fmt: skip
def test_sampling_params_reject_out_of_range(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        SamplingParams.model_validate({field: value})


def test_sampling_params_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="max_token"):
        SamplingParams.model_validate({"max_token": 5})


def test_chat_message_roles() -> None:
    assert ChatMessage(role="user", content="hi").role == "user"
    with pytest.raises(ValidationError):
        ChatMessage.model_validate({"role": "robot", "content": "hi"})


def test_perplexity() -> None:
    c = Confidence(mean_logprob=math.log(0.5), min_logprob=-1.0, mean_entropy=0.3, tokens=4)
    assert c.perplexity == pytest.approx(2.0)


def test_a_json_schema_nested_too_deep_for_a_grammar_compiler_is_refused() -> None:
    from edgecloud.types import MAX_SCHEMA_NESTING

    def nested(levels: int) -> str:  # an object holding arrays: ``levels`` levels in all
        return '{"enum": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"

    SamplingParams(json_schema=nested(MAX_SCHEMA_NESTING))
    with pytest.raises(ValidationError, match="json_schema nests 65 levels deep; at most 64"):
        SamplingParams(json_schema=nested(MAX_SCHEMA_NESTING + 1))
    with pytest.raises(ValidationError, match="json_schema is nested too deeply"):
        SamplingParams(json_schema="[" * 30_000 + "]" * 30_000)
