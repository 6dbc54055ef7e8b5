"""protobuf <-> plain types: round trips and defaults."""

from __future__ import annotations

import pytest

from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud.errors import InvalidRequestError
from edgecloud.transport._serde import (
    chat_to_proto,
    event_from_proto,
    event_to_proto,
    params_from_proto,
    params_to_proto,
    prompt_from_proto,
)
from edgecloud.types import ChatMessage, Chunk, Finish, SamplingParams


def test_sampling_params_round_trip() -> None:
    params = SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, top_k=40, seed=3,
                            stop=("\n", "END"))  # fmt: skip
    back = params_from_proto(params_to_proto(params), default_max_tokens=99)
    assert back.max_tokens == 7 and back.top_k == 40 and back.seed == 3
    assert back.stop == ("\n", "END")
    assert back.temperature == pytest.approx(0.5) and back.top_p == pytest.approx(0.9)


def test_unset_fields_take_defaults() -> None:
    params = params_from_proto(pb.SamplingParams(), default_max_tokens=99)
    assert params == SamplingParams(max_tokens=99)


@pytest.mark.parametrize(
    "msg",
    [pb.SamplingParams(temperature=9.0), pb.SamplingParams(top_p=1.5),
     pb.SamplingParams(stop=[""]), pb.SamplingParams(stop=["x"] * 17)],
)  # fmt: skip
def test_out_of_range_params_are_invalid_requests(msg: pb.SamplingParams) -> None:
    with pytest.raises(InvalidRequestError):
        params_from_proto(msg, default_max_tokens=16)


def test_prompt_and_chat_inputs() -> None:
    assert prompt_from_proto(pb.GenerateRequest(prompt="hi")) == "hi"
    chat = chat_to_proto([ChatMessage(role="user", content="hey")])
    got = prompt_from_proto(pb.GenerateRequest(chat=chat))
    assert got == [{"role": "user", "content": "hey"}]
    with pytest.raises(InvalidRequestError):
        prompt_from_proto(pb.GenerateRequest())


def test_events_round_trip() -> None:
    chunk = Chunk("sky", 42, -0.25, 1.5, "cloud", 3)
    assert event_from_proto(event_to_proto(chunk)) == chunk
    flushed = Chunk("tail", -1, 0.0, 0.0, "cloud", 4)
    assert event_from_proto(event_to_proto(flushed)) == flushed
    for reason in ("stop", "length", "cancelled"):
        end = Finish(reason, 5, 4)  # type: ignore[arg-type]
        assert event_from_proto(event_to_proto(end)) == end
    with pytest.raises(InvalidRequestError):
        event_from_proto(pb.GenerateResponse())
