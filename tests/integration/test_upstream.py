"""The ``openai`` cloud backend against a real OpenAI-compatible server.

llama-cpp-python's own server (``python -m llama_cpp.server``) runs the embedded GGUF on a
loopback port; a real CloudServer forwards to it through :class:`UpstreamBackend`, and the
device-side CloudClient streams over gRPC: tokens with logprobs, continuation after an
assistant prefix, greedy verification of a prefix, adapters by name, records, and an
upstream that dies mid-stream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.cloud._records import RecordStore
from edgecloud.common.records import EscalationRecord
from edgecloud.errors import RemoteError, TransportError, UnknownAdapterError
from edgecloud.transport import CloudClient
from edgecloud.types import Chunk, Finish, Retraction
from tests.integration._cloudproc import collect, start_cloud, stop
from tests.integration._upstreamserve import serving
from tests.llamaserver import llama_server, server_available

pytestmark = pytest.mark.skipif(
    not server_available(),
    reason="llama_cpp.server needs sse-starlette, starlette-context, pydantic-settings (dev extra)",
)

PROMPT = "Q: What is the capital of France?\nA:"


@pytest.fixture(scope="module")
def upstream(default_gguf: Path) -> Iterator[str]:
    with llama_server(default_gguf) as (_, url):
        yield url


def direct(url: str, prompt: str, max_tokens: int) -> str:
    """The upstream's own greedy completion, asked without edgecloud in between."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    resp = httpx.post(url + "/completions", json=body, timeout=60)
    resp.raise_for_status()
    return str(resp.json()["choices"][0]["text"])


def test_tokens_stream_with_logprobs_and_match_the_upstream(upstream: str, tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Chunk], Finish, dict[str, Any]]:
        async with serving(upstream, tmp_path) as c:
            chunks, finish = await collect(c, PROMPT, max_tokens=8, temperature=0.0)
            return chunks, finish, dict(await c.info())

    chunks, finish, info = asyncio.run(scenario())
    assert finish.reason == "length" and finish.completion_tokens == 8 == len(chunks)
    assert "".join(ch.text for ch in chunks) == direct(upstream, PROMPT, 8)
    assert [ch.index for ch in chunks] == list(range(8))
    assert all(ch.source == "cloud" and ch.token_id >= 0 for ch in chunks)
    # Real signals: log-probabilities below 0; the entropy, estimated from the top 5
    # (the greedy token among them), is at least the chosen token's own share.
    assert all(ch.logprob <= 0 for ch in chunks) and any(ch.logprob < -0.01 for ch in chunks)
    for ch in chunks:
        p = math.exp(ch.logprob)
        assert math.isfinite(ch.entropy) and ch.entropy >= -p * math.log(p) - 1e-9
    assert any(ch.entropy > 0.1 for ch in chunks)
    assert info["backend"] == "openai" and info["models"]


def test_continuation_after_an_assistant_prefix(upstream: str, tmp_path: Path) -> None:
    prefix = " The capital of"

    async def scenario() -> tuple[list[Chunk], Finish]:
        async with serving(upstream, tmp_path) as c:
            return await collect(c, PROMPT, max_tokens=4, temperature=0.0, assistant_prefix=prefix)

    chunks, finish = asyncio.run(scenario())
    text = "".join(ch.text for ch in chunks)
    assert text == direct(upstream, PROMPT + prefix, 4)
    assert not text.startswith(prefix) and finish.completion_tokens == len(chunks) == 4


def test_verify_prefix_keeps_what_the_model_agrees_with(upstream: str, tmp_path: Path) -> None:
    greedy = direct(upstream, PROMPT, 6)
    wrong = greedy[: greedy.index(" of") + 3] + " Germany is"  # " The capital of Germany is"

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with serving(upstream, tmp_path) as c:
            agreed = [
                e
                async for e in c.stream(
                    PROMPT,
                    max_tokens=2,
                    temperature=0.0,
                    assistant_prefix=greedy[:12],
                    verify_prefix=True,
                )
            ]
            rejected = [
                e
                async for e in c.stream(
                    PROMPT,
                    max_tokens=2,
                    temperature=0.0,
                    assistant_prefix=wrong,
                    verify_prefix=True,
                )
            ]
            return agreed, rejected  # fmt: skip

    agreed, rejected = asyncio.run(scenario())
    assert not any(isinstance(e, Retraction) for e in agreed)
    retraction = rejected[0]
    assert isinstance(retraction, Retraction)
    kept = wrong[: retraction.kept]
    assert greedy.startswith(kept) and retraction.rejected == wrong[retraction.kept :]
    assert "Germany" in retraction.rejected and retraction.kept_tokens >= 3
    continued = "".join(e.text for e in rejected[1:] if isinstance(e, Chunk))
    assert kept + continued == greedy[: len(kept + continued)]  # back on the model's path


def test_adapters_map_to_upstream_model_names(upstream: str, tmp_path: Path) -> None:
    model = httpx.get(upstream + "/models").json()["data"][0]["id"]

    async def scenario() -> tuple[list[Chunk], BaseException | None]:
        async with serving(upstream, tmp_path, adapters={"support": model}) as c:
            chunks, _ = await collect(c, PROMPT, max_tokens=3, temperature=0.0,
                                      adapter_id="support")  # fmt: skip
            try:
                await collect(c, PROMPT, max_tokens=3, adapter_id="other")
            except UnknownAdapterError as exc:
                return chunks, exc
            return chunks, None

    chunks, error = asyncio.run(scenario())
    assert "".join(ch.text for ch in chunks) == direct(upstream, PROMPT, 3)
    assert isinstance(error, UnknownAdapterError) and "other" in str(error)


def test_a_prompt_beyond_the_upstream_context_fails_at_once(upstream: str, tmp_path: Path) -> None:
    """llama_cpp.server answers a streamed prompt longer than its 2048-token context with an
    empty 200 stream (its non-streamed answer is a 400): the device gets a RemoteError at
    once, not a hang or a silent empty answer. (A 400, as vLLM sends, is INVALID_ARGUMENT:
    tests/unit/cloud/test_upstream.py.)"""
    long_prompt = "word " * 3000

    async def scenario() -> tuple[BaseException | None, float]:
        start = time.monotonic()
        async with serving(upstream, tmp_path) as c:
            try:
                await collect(c, long_prompt, max_tokens=4)
            except TransportError as exc:
                return exc, time.monotonic() - start
            return None, time.monotonic() - start

    error, took = asyncio.run(scenario())
    assert isinstance(error, RemoteError) and took < 20


def test_records_are_stored_as_with_any_backend(upstream: str, tmp_path: Path) -> None:
    rec = EscalationRecord("q", "part", "answer", "confidence", "low", id="rec-1")

    async def scenario() -> list[str]:
        async with serving(upstream, tmp_path) as c:
            return await c.upload([rec, rec])

    assert asyncio.run(scenario()) == ["rec-1", "rec-1"]
    assert [s.record.id for s in RecordStore(tmp_path / "r.db").records()] == ["rec-1"]


def test_an_upstream_that_dies_mid_stream_fails_the_call(
    default_gguf: Path, tmp_path: Path
) -> None:
    with llama_server(default_gguf) as (proc, url):

        async def scenario() -> tuple[int, BaseException | None, float]:
            async with serving(url, tmp_path) as c:
                got, start = 0, time.monotonic()
                try:
                    async for event in c.stream(PROMPT, max_tokens=60, temperature=0.0):
                        if isinstance(event, Chunk):
                            got += 1
                            if got == 2:
                                proc.kill()  # the upstream dies with the stream open
                except TransportError as exc:
                    return got, exc, time.monotonic() - start
                return got, None, time.monotonic() - start

        got, error, took = asyncio.run(scenario())
    assert isinstance(error, RemoteError), error
    assert 2 <= got < 60 and took < 20


def test_cli_serves_the_upstream_with_records_in_postgres(
    upstream: str, postgres_url: str, tmp_path: Path
) -> None:
    """`edgecloud cloud serve --backend openai --upstream URL --records postgresql://...` as a
    real process: answers stream from the upstream, uploads land in PostgreSQL."""
    import psycopg

    from edgecloud.cloud._pgrecords import PgRecordStore

    proc, port = start_cloud(
        tmp_path, "--backend", "openai", "--upstream", upstream, "--records", postgres_url
    )
    try:

        async def scenario() -> tuple[list[Chunk], list[str], dict[str, Any]]:
            async with CloudClient(f"127.0.0.1:{port}", tls=False, max_attempts=1) as c:
                chunks, _ = await collect(c, PROMPT, max_tokens=4, temperature=0.0)
                rec = EscalationRecord("q", "p", "a", "confidence", "low", id="cli-rec")
                return chunks, await c.upload([rec]), dict(await c.info())

        chunks, acked, info = asyncio.run(scenario())
    finally:
        stop(proc)
    assert "".join(ch.text for ch in chunks) == direct(upstream, PROMPT, 4)
    assert acked == ["cli-rec"] and info["backend"] == "openai"
    store = PgRecordStore(postgres_url)
    try:
        assert "cli-rec" in {s.record.id for s in store.records()}
    finally:
        store.close()
    with psycopg.connect(postgres_url) as db:  # a real table, not a file beside the cache
        assert db.execute("SELECT count(*) FROM escalations WHERE id = 'cli-rec'").fetchone() == (
            1,
        )
