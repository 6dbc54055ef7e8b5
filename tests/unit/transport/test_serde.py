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
    verification_from_proto,
)
from edgecloud.types import ChatMessage, Chunk, Finish, Retraction, SamplingParams


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


def test_a_retraction_round_trips_as_retract() -> None:
    retraction = Retraction(kept=7, rejected=" 1000 kg", kept_tokens=3)
    msg = event_to_proto(retraction)
    assert msg.WhichOneof("event") == "retract"
    assert (msg.retract.kept_chars, msg.retract.kept_tokens) == (7, 3)
    assert event_from_proto(msg) == retraction


def test_verification_fields() -> None:
    assert verification_from_proto(pb.GenerateRequest()) == (False, ())
    req = pb.GenerateRequest(verify_prefix=True, prefix_logprobs=[-0.5, 0.0, -2.25])
    assert verification_from_proto(req) == (True, (-0.5, 0.0, -2.25))


@pytest.mark.parametrize(
    "msg",
    [pb.GenerateRequest(prefix_logprobs=[-0.5]),  # without verify_prefix
     pb.GenerateRequest(verify_prefix=True, prefix_logprobs=[-0.5, 0.25]),
     pb.GenerateRequest(verify_prefix=True, prefix_logprobs=[float("nan")]),
     pb.GenerateRequest(verify_prefix=True, prefix_logprobs=[float("-inf")])],
)  # fmt: skip
def test_bad_prefix_logprobs_are_invalid_requests(msg: pb.GenerateRequest) -> None:
    with pytest.raises(InvalidRequestError):
        verification_from_proto(msg)


def test_finish_passages_round_trip() -> None:
    from edgecloud.types import Passage

    passages = (Passage("Kestrel: payload 22.0 kg", "kestrel.md", 0.75),
                Passage("Heron: payload 9.5 kg", "heron.md", 0.5))  # fmt: skip
    back = event_from_proto(event_to_proto(Finish("stop", 10, 3, passages)))
    assert isinstance(back, Finish)
    assert [(p.text, p.source) for p in back.passages] == [(p.text, p.source) for p in passages]
    assert back.passages[0].score == pytest.approx(0.75)
    plain = event_from_proto(event_to_proto(Finish("stop", 1, 1)))
    assert isinstance(plain, Finish) and plain.passages == ()


def test_escalation_record_round_trip() -> None:
    from edgecloud.common.records import EscalationRecord
    from edgecloud.transport._serde import record_from_proto, record_to_proto

    record = EscalationRecord(
        prompt="Q: payload?", local_partial="The pay", cloud_answer="22 kg",
        route_policy="confidence", route_reason="low logprob",
        signals={"mean_logprob": -2.5, "tokens": 4}, latency_ms=812.5,
        extra={"passages": ["kestrel.md"]}, created_at=1_700_000_000.123,
    )  # fmt: skip
    back = record_from_proto(record_to_proto(record))
    assert back == record


@pytest.mark.parametrize(
    "msg",
    [pb.EscalationRecord(id=""), pb.EscalationRecord(id="x" * 129),
     pb.EscalationRecord(id="a", signals_json="{not json"),
     pb.EscalationRecord(id="a", extra_json="[1, 2]")],
)  # fmt: skip
def test_bad_escalation_records_are_invalid_requests(msg: pb.EscalationRecord) -> None:
    from edgecloud.transport._serde import record_from_proto

    with pytest.raises(InvalidRequestError):
        record_from_proto(msg)
