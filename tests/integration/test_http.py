"""The OpenAI-compatible endpoint on the real model, driven by the official ``openai``
client (sync and async, streaming and not), raw HTTP for what a client library would not
send, and ``curl -N`` against ``edgecloud device serve`` in its own process.

Every bad request gets OpenAI's error shape with the right status, and the next request
is served; a client that goes away frees the model at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from edgecloud import AsyncClient, Client
from edgecloud.backends import LlamaCppBackend
from edgecloud.config import Settings
from edgecloud.http import Server
from tests.deviceserve import start_device_serve
from tests.scrape import Snapshot

pytestmark = pytest.mark.model

QA = "Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Japan?\nA:"
ASK = [{"role": "user", "content": "What is the capital of Japan?"}]


def settings(model_cache: Path, **http: Any) -> Settings:
    return Settings.load(cache_dir=model_cache, device={"http": {"port": 0, **http}})


@pytest.fixture(scope="module")
def server(backend: LlamaCppBackend, model_cache: Path) -> Iterator[Server]:
    with Server(settings(model_cache), client=AsyncClient(backend)) as s:
        yield s


@pytest.fixture
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def model_id(server: Server) -> str:
    return server.state.model_name


def served(server: Server) -> None:
    """The server answers a small request right now."""
    client = openai.OpenAI(base_url=server.url, api_key=_KEY, max_retries=0, timeout=60)
    r = client.completions.create(model=model_id(server), prompt=QA, max_tokens=2)
    assert r.choices[0].text and r.usage is not None and r.usage.completion_tokens >= 1


_KEY = "key-for-the-tests-0001"


def test_models_health_and_metrics(
    server: Server, oai: openai.OpenAI, backend: LlamaCppBackend
) -> None:
    [card] = oai.models.list().data
    assert card.id == backend.info.model == model_id(server) and card.owned_by == "edgecloud"
    assert oai.models.retrieve(card.id).id == card.id
    base = server.url.removesuffix("/v1")
    health = httpx.get(f"{base}/health").json()
    assert health["status"] == "ok" and health["in_flight"] == 0
    before = httpx.get(f"{base}/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    r = oai.completions.create(model=card.id, prompt=QA, max_tokens=3)
    assert r.usage is not None
    after = Snapshot(httpx.get(f"{base}/metrics").content)
    local = {"side": "device", "source": "local"}
    assert after.delta(Snapshot(before.content), "edgecloud_tokens_total", **local) == (
        r.usage.completion_tokens
    )


def test_chat_with_logprobs_matches_the_sdk(
    server: Server, oai: openai.OpenAI, backend: LlamaCppBackend
) -> None:
    r = oai.chat.completions.create(model=model_id(server), messages=ASK, max_tokens=8,  # type: ignore[arg-type]
                                    temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    sdk = Client(backend).generate(ASK, max_tokens=8, temperature=0)
    choice = r.choices[0]
    assert choice.message.content == sdk.text and "Tokyo" in sdk.text
    assert choice.finish_reason == ("length" if sdk.finish_reason == "length" else "stop")
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (
        sdk.usage.prompt_tokens, sdk.usage.completion_tokens
    )  # fmt: skip
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert len(entries) == sdk.usage.completion_tokens
    assert "".join(e.token for e in entries) == sdk.text
    for e in entries:
        alts = [a.logprob for a in e.top_logprobs]
        assert len(alts) == 3 and alts == sorted(alts, reverse=True)
        # greedy: the chosen token is the most likely one
        assert e.top_logprobs[0].token == e.token and e.logprob == pytest.approx(alts[0])
        assert bytes(e.bytes or []) == e.token.encode()
    ext = (r.model_extra or {})["edgecloud"]
    assert ext["source"] == "local" and ext["route"] is None
    assert ext["confidence"]["tokens"] == sdk.usage.completion_tokens


def test_async_streaming_chat_with_usage(server: Server, backend: LlamaCppBackend) -> None:
    async def scenario() -> tuple[list[Any], str]:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model=model_id(server), messages=ASK, max_tokens=8, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        await client.close()
        return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    chunks, text = asyncio.run(scenario())
    sdk = Client(backend).generate(ASK, max_tokens=8, temperature=0)
    assert text == sdk.text
    assert chunks[0].choices[0].delta.role == "assistant"
    tokens = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert tokens and all((c.model_extra or {})["edgecloud"]["source"] == "local" for c in tokens)
    final, usage = chunks[-2], chunks[-1]
    assert final.choices[0].finish_reason in ("stop", "length")
    assert (final.model_extra or {})["edgecloud"]["finish"] == sdk.finish_reason
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == sdk.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_with_legacy_logprobs_streamed_and_not(
    server: Server, oai: openai.OpenAI
) -> None:
    m = model_id(server)
    whole = oai.completions.create(model=m, prompt=QA, max_tokens=5, temperature=0, logprobs=2,
                                   stop=["\nQ:"])  # fmt: skip
    lp = whole.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    text = whole.choices[0].text
    # the tokens are the model's own; the text ends before the stop sequence they spell
    assert "Tokyo" in text and "".join(lp.tokens).startswith(text)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert all(len(top) == 2 and max(top.values()) <= 0 for top in lp.top_logprobs)
    assert lp.token_logprobs == pytest.approx([max(t.values()) for t in lp.top_logprobs])
    streamed = list(oai.completions.create(model=m, prompt=QA, max_tokens=5, temperature=0,
                                           logprobs=2, stop=["\nQ:"], stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == text
    offsets = [c.choices[0].logprobs.text_offset[0] for c in streamed if c.choices[0].logprobs]
    assert offsets == lp.text_offset
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def post(server: Server, path: str, content: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, timeout=60,
                      headers={"content-type": "application/json", **headers})  # fmt: skip


@pytest.mark.parametrize(
    ("path", "raw", "status", "param"),
    [
        ("/chat/completions", b"{this is not json", 400, None),
        ("/chat/completions", b'"a string"', 400, None),
        ("/chat/completions", {"messages": ASK, "temperature": 0, "foo": 1}, 400, "foo"),
        ("/chat/completions", {"messages": ASK, "n": 3}, 400, "n"),
        ("/chat/completions", {"messages": ASK, "max_tokens": 10**9}, 400, "max_tokens"),
        ("/completions", {"prompt": QA, "max_tokens": 4096}, 400, "max_tokens"),  # > context
        ("/completions", {"prompt": "word " * 3000, "max_tokens": 4}, 400, "prompt"),
        ("/chat/completions", {"model": "gpt-9", "messages": ASK}, 404, "model"),
        ("/nowhere", {}, 404, None),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors_and_the_next_is_served(
    server: Server, path: str, raw: Any, status: int, param: str | None
) -> None:
    if isinstance(raw, dict):
        raw = json.dumps({"model": model_id(server), **raw}).encode()
    r = post(server, path, raw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    served(server)


def test_the_openai_client_raises_its_own_errors(server: Server, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        oai.chat.completions.create(model="gpt-9", messages=ASK)  # type: ignore[arg-type]
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument") as bad:
        oai.chat.completions.create(model=model_id(server), messages=ASK,  # type: ignore[arg-type]
                                    extra_body={"mirostat": 2})  # fmt: skip
    assert bad.value.param == "mirostat"
    served(server)


def test_api_keys_and_cors(backend: LlamaCppBackend, model_cache: Path) -> None:
    cfg = settings(model_cache, api_keys=["another-key-0000", _KEY],
                   cors_origins=["https://app.example"])  # fmt: skip
    with Server(cfg, client=AsyncClient(backend)) as s:
        # a browser's preflight needs no key; only the listed origin is allowed
        ask = {"access-control-request-method": "POST",
               "access-control-request-headers": "authorization,content-type"}  # fmt: skip
        ok = httpx.options(
            f"{s.url}/chat/completions", headers={"origin": "https://app.example", **ask}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(
            f"{s.url}/chat/completions", headers={"origin": "https://evil.example", **ask}
        )
        assert "access-control-allow-origin" not in other.headers
        bad = openai.OpenAI(base_url=s.url, api_key="wrong-key-0000", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.code == "invalid_api_key"
        r = httpx.post(f"{s.url}/completions", json={"model": model_id(s), "prompt": QA})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{s.url.removesuffix('/v1')}/metrics").status_code == 401
        assert httpx.get(f"{s.url.removesuffix('/v1')}/health").status_code == 200
        served(s)


def test_oversize_bodies_are_refused_by_length_and_by_what_arrives(
    backend: LlamaCppBackend, model_cache: Path
) -> None:
    with Server(settings(model_cache, max_body_bytes=2048), client=AsyncClient(backend)) as s:
        big = json.dumps({"model": model_id(s), "prompt": "x" * 4000}).encode()
        r = post(s, "/completions", big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: only the bytes tell
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        r = post(s, "/completions", chunked())
        assert "content-length" not in r.request.headers
        assert r.status_code == 413
        served(s)


def _read_events(response: httpx.Response, n: int) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: {"):
            events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == n:
                break
    return events


def test_queue_full_gets_429_then_the_next_request_is_served(
    backend: LlamaCppBackend, model_cache: Path
) -> None:
    with Server(settings(model_cache, max_queue=0), client=AsyncClient(backend)) as s:
        # Counting never ends by itself: the request still runs when the second one comes.
        body = {"model": model_id(s), "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 400,
                "temperature": 0, "stream": True}  # fmt: skip
        with httpx.Client(timeout=60) as http, http.stream("POST", f"{s.url}/completions",
                                                           json=body) as running:  # fmt: skip
            assert running.status_code == 200 and _read_events(running, 2)
            oai = openai.OpenAI(base_url=s.url, api_key="unused", max_retries=0)
            with pytest.raises(openai.RateLimitError) as info:
                oai.completions.create(model=model_id(s), prompt=QA, max_tokens=2)
            assert info.value.code == "queue_full"
        _wait_until(lambda: s.state.in_flight == 0)
        served(s)


def _wait_until(condition: Any, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_client_that_disconnects_frees_the_model_at_once(
    server: Server, backend: LlamaCppBackend
) -> None:
    state = server.state
    cancelled = state.cancelled
    body = {"model": model_id(server), "messages": [{"role": "user", "content": "Write a long essay."}],
            "max_tokens": 1000, "stream": True}  # fmt: skip
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{server.url}/chat/completions",
                                                       json=body) as r:  # fmt: skip
        assert len(_read_events(r, 4)) == 4
    # The generation was cancelled and its worker stopped: the request is counted out
    # only once the model is free (see OpenAIServer.release).
    assert _wait_until(lambda: state.in_flight == 0) < 2.0
    assert state.cancelled == cancelled + 1
    t0 = time.monotonic()
    served(server)
    assert time.monotonic() - t0 < 10.0  # the 1000-token essay is not still being written
    # and the backend's lock is free: a direct stream starts at once
    stream = Client(backend).stream(QA, max_tokens=1)
    assert next(iter(stream)).token_id >= 0
    stream.close()


def test_a_client_that_gives_up_on_a_whole_answer_frees_the_model(server: Server) -> None:
    state = server.state
    cancelled = state.cancelled
    body = {"model": model_id(server), "prompt": "Write a long essay.", "max_tokens": 1000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/completions", json=body, timeout=1.5)
    assert _wait_until(lambda: state.in_flight == 0) < 2.0
    assert state.cancelled == cancelled + 1
    served(server)


def test_curl_streams_server_sent_events_from_the_cli(model_cache: Path, tmp_path: Path) -> None:
    env = {"EDGECLOUD_CACHE_DIR": str(model_cache), "EDGECLOUD_DEVICE__MODEL__N_THREADS": "2",
           "EDGECLOUD_DEVICE__HTTP__MODEL_NAME": "tiny"}  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    proc, url = start_device_serve(env, log)
    try:
        body = json.dumps({"model": "tiny", "prompt": QA, "max_tokens": 4, "stream": True,
                           "temperature": 0})  # fmt: skip
        out = subprocess.run(
            ["curl", "-N", "-sS", f"{url}/v1/completions",
             "-H", "Content-Type: application/json", "-d", body],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        events = out.stdout.split("\n\n")
        assert events[-1] == "" and events[-2] == "data: [DONE]"
        objs = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
        assert all(e.startswith("data: ") for e in events[:-1])
        assert all(o["object"] == "text_completion" and o["model"] == "tiny" for o in objs)
        assert "Tokyo" in "".join(o["choices"][0]["text"] for o in objs)
        assert objs[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
