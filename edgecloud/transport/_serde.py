"""The one place that converts between protobuf messages and edgecloud's plain types."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud.common.records import EscalationRecord
from edgecloud.common.settings import format_validation_error
from edgecloud.errors import InvalidRequestError
from edgecloud.types import (
    ChatMessage,
    Chunk,
    Finish,
    FinishReason,
    Passage,
    Retraction,
    SamplingParams,
)

__all__ = [
    "chat_to_proto",
    "event_from_proto",
    "event_to_proto",
    "params_from_proto",
    "params_to_proto",
    "prompt_from_proto",
    "record_from_proto",
    "record_to_proto",
    "verification_from_proto",
]

MAX_RECORD_ID = 128
"""Longest escalation record id accepted (ids are uuid4 hex on devices)."""

_REASON_TO_PROTO: dict[str, int] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}
_REASON_FROM_PROTO: dict[int, FinishReason] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CANCELLED: "cancelled",
}


def params_to_proto(params: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        stop=list(params.stop),
        json_schema=params.json_schema or "",
    )
    if params.seed is not None:
        msg.seed = params.seed
    return msg


def params_from_proto(msg: pb.SamplingParams, *, default_max_tokens: int) -> SamplingParams:
    """Unset (zero) fields take their defaults; out-of-range values fail.

    Raises:
        InvalidRequestError: a value is out of range.
    """
    try:
        return SamplingParams(
            max_tokens=msg.max_tokens or default_max_tokens,
            temperature=msg.temperature,
            top_p=msg.top_p or 1.0,
            top_k=msg.top_k,
            seed=msg.seed if msg.HasField("seed") else None,
            stop=tuple(msg.stop),
            json_schema=msg.json_schema or None,
        )
    except ValidationError as exc:
        raise InvalidRequestError(f"sampling: {format_validation_error(exc)}") from exc


def chat_to_proto(messages: list[ChatMessage]) -> pb.ChatMessages:
    return pb.ChatMessages(
        messages=[pb.ChatMessage(role=m.role, content=m.content) for m in messages]
    )


def prompt_from_proto(msg: pb.GenerateRequest) -> str | list[dict[str, str]]:
    """The raw prompt or the chat messages as dicts (validated by ``normalize_prompt``).

    Raises:
        InvalidRequestError: neither a prompt nor messages were sent.
    """
    which = msg.WhichOneof("input")
    if which == "prompt":
        return msg.prompt
    if which == "chat":
        return [{"role": m.role, "content": m.content} for m in msg.chat.messages]
    raise InvalidRequestError("the request has neither a prompt nor chat messages")


def verification_from_proto(msg: pb.GenerateRequest) -> tuple[bool, tuple[float, ...]]:
    """``verify_prefix`` and the device's ``prefix_logprobs``, checked.

    Raises:
        InvalidRequestError: logprobs without ``verify_prefix``, or a value that is not
            a log-probability (NaN, infinite, positive).
    """
    logprobs = tuple(msg.prefix_logprobs)
    if logprobs and not msg.verify_prefix:
        raise InvalidRequestError("prefix_logprobs are only used with verify_prefix")
    if not all(math.isfinite(lp) and lp <= 0.0 for lp in logprobs):
        raise InvalidRequestError("prefix_logprobs must be finite and not positive")
    return msg.verify_prefix, logprobs


def event_to_proto(event: Chunk | Finish | Retraction) -> pb.GenerateResponse:
    if isinstance(event, Retraction):
        return pb.GenerateResponse(
            retract=pb.Retract(
                kept_chars=event.kept, kept_tokens=event.kept_tokens, rejected=event.rejected
            )
        )
    if isinstance(event, Finish):
        return pb.GenerateResponse(
            finish=pb.Finish(
                reason=_REASON_TO_PROTO[event.reason],  # type: ignore[arg-type]
                usage=pb.Usage(
                    prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
                ),
                passages=[
                    pb.Passage(text=p.text, source=p.source, score=p.score) for p in event.passages
                ],
            )
        )
    return pb.GenerateResponse(
        token=pb.Token(
            text=event.text,
            token_id=event.token_id,
            logprob=event.logprob,
            entropy=event.entropy,
            index=event.index,
        )
    )


def event_from_proto(msg: pb.GenerateResponse) -> Chunk | Finish | Retraction:
    """A response as the retraction, chunks and end marker the device side consumes.

    Raises:
        InvalidRequestError: the message carries no event.
    """
    which = msg.WhichOneof("event")
    if which == "token":
        t = msg.token
        return Chunk(t.text, t.token_id, t.logprob, t.entropy, "cloud", t.index)
    if which == "finish":
        f = msg.finish
        reason = _REASON_FROM_PROTO.get(f.reason, "stop")
        passages = tuple(Passage(p.text, p.source, p.score) for p in f.passages)
        return Finish(reason, f.usage.prompt_tokens, f.usage.completion_tokens, passages)
    if which == "retract":
        r = msg.retract
        return Retraction(r.kept_chars, r.rejected, r.kept_tokens)
    raise InvalidRequestError("the service sent an empty response message")


def record_to_proto(record: EscalationRecord) -> pb.EscalationRecord:
    return pb.EscalationRecord(
        id=record.id,
        created_at_unix_ms=max(0, round(record.created_at * 1000)),
        prompt=record.prompt,
        local_partial=record.local_partial,
        cloud_answer=record.cloud_answer,
        route_policy=record.route_policy,
        route_reason=record.route_reason,
        signals_json=json.dumps(dict(record.signals)),
        latency_ms=record.latency_ms,
        extra_json=json.dumps(dict(record.extra)),
    )


def record_from_proto(msg: pb.EscalationRecord) -> EscalationRecord:
    """A device's uploaded record as the plain dataclass.

    Raises:
        InvalidRequestError: no id, an id too long, or signals/extra that are not JSON objects.
    """
    if not msg.id or len(msg.id) > MAX_RECORD_ID:
        raise InvalidRequestError(f"escalation record id must have 1 to {MAX_RECORD_ID} characters")
    return EscalationRecord(
        prompt=msg.prompt,
        local_partial=msg.local_partial,
        cloud_answer=msg.cloud_answer,
        route_policy=msg.route_policy,
        route_reason=msg.route_reason,
        signals=_json_object(msg.signals_json, "signals_json", msg.id),
        latency_ms=msg.latency_ms,
        private=False,
        extra=_json_object(msg.extra_json, "extra_json", msg.id),
        id=msg.id,
        created_at=msg.created_at_unix_ms / 1000,
    )


def _json_object(text: str, name: str, record_id: str) -> Mapping[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"escalation record {record_id[:32]!r}: {name} is not a JSON object"
        )
    return value
