"""The OpenAI wire format of the device endpoint, without a server or a model: request
checks (each refusal names its field), options, and the response objects."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from edgecloud.errors import (
    BackendClosedError,
    ContextOverflowError,
    InvalidRequestError,
    OverloadedError,
    RemoteError,
)
from edgecloud.http._protocol import (
    NEG_INF_LOGPROB,
    ChatRequest,
    CompletionRequest,
    HttpError,
    ResponseBuilder,
    error_from,
    generate_options,
    parse_request,
    sse,
)
from edgecloud.types import (
    Chunk,
    Confidence,
    GenerationResult,
    RouteInfo,
    Timings,
    Usage,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def body(**fields: Any) -> bytes:
    return json.dumps({**CHAT, **fields}).encode()


def refused(kind: str, raw: bytes) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse_request(kind, raw)  # type: ignore[arg-type]
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize(
    ("raw", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (body(foo=1), "foo", "Unrecognized request argument supplied: foo"),
        (body(n=2), "n", "n>1"),
        (body(n=True), "n", "n>1"),
        (body(frequency_penalty=0.5), "frequency_penalty", "not supported"),
        (body(tools=[{"type": "function"}]), "tools.0.function", "is required"),
        (body(response_format={"type": "xml"}), "response_format.type", "Input should be"),
        (body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (body(max_tokens="5"), "max_tokens", "valid integer"),
        (body(temperature=3), "temperature", "less than or equal to 2"),
        (body(top_logprobs=21, logprobs=True), "top_logprobs", "less than or equal to 20"),
        (body(messages=[]), "messages", "at least 1"),
        (body(messages=[{"role": "critic", "content": "x"}]), "messages.0.role", "Input should be"),
        (body(messages=[{"role": "user", "content": "x", "name": "bob"}]), "messages.0.name",
         "Unrecognized"),
        (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
         "messages.0.content", "messages.0.content"),
        (body(edgecloud={"route": "moon"}), "edgecloud.route", "Input should be"),
        (json.dumps({"messages": CHAT["messages"]}).encode(), "model", "model is required"),
    ],
)  # fmt: skip
def test_bad_chat_requests_are_refused_naming_the_field(
    raw: bytes, param: str | None, words: str
) -> None:
    err = refused("chat", raw)
    assert err.param == param
    assert words in err.message
    assert err.body()["error"]["type"] == "invalid_request_error"


def test_fields_at_their_default_are_accepted_and_ignored() -> None:
    req = parse_request("chat", body(n=1, frequency_penalty=0, presence_penalty=0.0,
                                     logit_bias={}, user="u-1", store=False, tools=[],
                                     tool_choice="none", response_format={"type": "text"},
                                     parallel_tool_calls=True, service_tier="auto",
                                     stream_options={"include_usage": True}))  # fmt: skip
    assert isinstance(req, ChatRequest) and req.stream_options is not None
    comp = parse_request(
        "completion", b'{"model": "m", "prompt": ["x"], "echo": false, "best_of": 1}'
    )
    assert isinstance(comp, CompletionRequest) and comp.text() == "x"
    assert refused("completion", b'{"model": "m", "prompt": "x", "echo": true}').param == "echo"
    assert refused("completion", b'{"model": "m", "prompt": "x", "logprobs": true}').param == (
        "logprobs"
    )


def test_messages_become_chat_messages() -> None:
    req = parse_request("chat", body(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]))  # fmt: skip
    assert isinstance(req, ChatRequest)
    msgs = [m.to_chat() for m in req.messages]
    assert [(m.role, m.content) for m in msgs] == [("system", "be brief"), ("user", "a\nb")]


def options(raw: bytes, kind: str = "chat", cap: int = 100) -> dict[str, Any]:
    return generate_options(parse_request(kind, raw), max_tokens=64, cap=cap)  # type: ignore[arg-type]


def test_options_map_openai_parameters() -> None:
    opts = options(body(max_completion_tokens=7, temperature=0.5, top_p=0.9, seed=-1,
                        stop="\n", logprobs=True, top_logprobs=3,
                        edgecloud={"route": "local", "top_k": 40, "show_unverified": True}))  # fmt: skip
    assert opts["max_tokens"] == 7 and opts["temperature"] == 0.5 and opts["top_p"] == 0.9
    assert opts["seed"] == (1 << 32) - 1 and opts["stop"] == "\n" and opts["top_logprobs"] == 3
    assert (opts["route"], opts["top_k"], opts["show_unverified"]) == ("local", 40, True)
    plain = options(body())
    assert plain["max_tokens"] == 64 and "temperature" not in plain and "seed" not in plain
    assert plain["show_unverified"] is False and plain["top_logprobs"] is None
    assert options(body(), cap=10)["max_tokens"] == 10
    assert options(body(top_p=0))["temperature"] == 0.0


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (body(max_tokens=101), "max_tokens"),
        (body(max_completion_tokens=10**9), "max_completion_tokens"),
        (body(max_tokens=5, max_completion_tokens=6), "max_completion_tokens"),
        (body(top_logprobs=2), "top_logprobs"),
    ],
)
def test_absurd_or_inconsistent_options_are_refused(raw: bytes, param: str) -> None:
    with pytest.raises(HttpError) as info:
        options(raw)
    assert (info.value.status, info.value.param) == (400, param)


def test_sdk_errors_map_to_http_statuses() -> None:
    overflow = ContextOverflowError("long", prompt_tokens=9, context_tokens=8)
    assert (error_from(overflow).status, error_from(overflow).code) == (
        400, "context_length_exceeded"
    )  # fmt: skip
    assert error_from(InvalidRequestError("bad")).status == 400
    assert error_from(OverloadedError("busy")).status == 503
    assert error_from(RemoteError("boom")).status == 503
    assert error_from(BackendClosedError("closed")).code == "shutting_down"


def result(text: str, route: RouteInfo | None = None) -> GenerationResult:
    return GenerationResult(
        text=text, finish_reason="length", usage=Usage(5, 3),
        confidence=Confidence(-0.5, -1.0, math.nan, 3), source="mixed",
        timings=Timings(0.1, 0.3, 10.0), model="m", route=route,
    )  # fmt: skip


TOKENS = [
    Chunk("He", 1, -0.1, 0.5, "local", 0, top=(("He", -0.1), ("Hi", -2.0))),
    Chunk("llo", 2, -math.inf, 0.5, "local", 1, top=(("llo", -0.2),)),
    Chunk(" world", 9, -0.3, 0.2, "cloud", 2, retracted=3),
]


def test_chat_stream_chunks_carry_logprobs_and_the_extension() -> None:
    b = ResponseBuilder("chat", "m", logprobs=1, include_usage=True)
    [head] = b.head()
    assert head["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert head["usage"] is None and head["id"].startswith("chatcmpl-")
    out = [b.chunk(c) for c in TOKENS]
    assert all(o is not None for o in out)
    first = out[0]["choices"][0]  # type: ignore[index]
    entry = first["logprobs"]["content"][0]
    assert entry == {"token": "He", "logprob": -0.1, "bytes": [72, 101],
                     "top_logprobs": [{"token": "He", "logprob": -0.1, "bytes": [72, 101]}]}  # fmt: skip
    assert out[1]["choices"][0]["logprobs"]["content"][0]["logprob"] == NEG_INF_LOGPROB  # type: ignore[index]
    assert out[2]["edgecloud"] == {"source": "cloud", "retracted": 3}  # type: ignore[index]
    route = RouteInfo("confidence-window", "low confidence", {"mean": math.nan}, escalated=True)
    last, usage = b.tail(result("He world", route))
    assert last["choices"][0]["finish_reason"] == "length"
    ext = last["edgecloud"]
    assert ext["source"] == "mixed" and ext["route"]["policy"] == "confidence-window"
    assert ext["route"]["signals"] == {"mean": None} and ext["confidence"]["mean_entropy"] is None
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 8
    json.dumps([head, *out, last, usage], allow_nan=False)  # strict JSON throughout


def test_chunks_without_anything_to_send_are_skipped() -> None:
    b = ResponseBuilder("chat", "m", logprobs=None)
    assert b.chunk(Chunk("", 5, -0.1, 0.1, "local", 0)) is None
    with_lp = ResponseBuilder("chat", "m", logprobs=0)
    assert with_lp.chunk(Chunk("", 5, -0.1, 0.1, "local", 0)) is not None  # the token's logprob


def test_completion_logprobs_offsets_follow_retractions() -> None:
    b = ResponseBuilder("completion", "m", logprobs=2)
    offsets = [b.chunk(c)["choices"][0]["logprobs"]["text_offset"][0] for c in TOKENS]  # type: ignore[index]
    assert offsets == [0, 2, 2]  # "Hello" lost "llo" before " world"
    whole = ResponseBuilder("completion", "m", logprobs=2).whole(
        [TOKENS[0], Chunk(" world", 9, -0.3, 0.2, "cloud", 1)], result("He world")
    )
    lp = whole["choices"][0]["logprobs"]
    assert lp["tokens"] == ["He", " world"] and lp["text_offset"] == [0, 2]
    assert lp["top_logprobs"] == [{"He": -0.1, "Hi": -2.0}, {}]
    assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == "He world"


def test_sse_framing() -> None:
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert sse({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()


def test_logprob_tokens_are_the_models_own_pieces() -> None:
    # the first byte of "日" (3 bytes): no text yet, but the token and its exact bytes
    half = Chunk("", 7, -0.5, 0.1, "local", 0, piece="日".encode()[:1])
    out = ResponseBuilder("chat", "m", logprobs=0).chunk(half)
    assert out is not None
    entry = out["choices"][0]["logprobs"]["content"][0]
    assert entry["token"] == "\ufffd" and entry["bytes"] == [0xE6]
    assert out["choices"][0]["delta"]["content"] == ""
