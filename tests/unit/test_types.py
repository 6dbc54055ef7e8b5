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
