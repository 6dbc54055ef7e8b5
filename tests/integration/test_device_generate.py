"""The device runtime on the real embedded model, checked against llama-cpp-python itself."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from edgecloud import AsyncClient, Client
from edgecloud.backends import LlamaCppBackend

pytestmark = pytest.mark.model

QA = "Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Japan?\nA:"
PROMPTS = [QA, "Explain what a servo motor is.", "The three laws of robotics are"]


@pytest.fixture(scope="module")
def raw_llama(default_gguf: Path):  # type: ignore[no-untyped-def]
    from llama_cpp import Llama

    llm = Llama(str(default_gguf), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    yield llm
    llm.close()


def test_greedy_text_matches_raw_llama_cpp(default_gguf: Path, raw_llama) -> None:  # type: ignore[no-untyped-def]
    # A fresh backend, so both sides evaluate each prompt from the same KV-cache state:
    # llama.cpp's arithmetic depends on how a prompt is split into batches, and a cache
    # left by other tests can break a near-tie differently.
    with Client(LlamaCppBackend(default_gguf, n_ctx=2048, n_threads=2)) as client:
        for prompt in PROMPTS:
            ours = client.generate(prompt, max_tokens=24)
            raw = raw_llama.create_completion(prompt, max_tokens=24, temperature=0.0)
            assert ours.text == raw["choices"][0]["text"]
            assert ours.usage.completion_tokens == raw["usage"]["completion_tokens"]
            assert ours.usage.prompt_tokens == raw["usage"]["prompt_tokens"]


def test_logprobs_and_entropy_match_full_softmax(default_gguf: Path, raw_llama) -> None:  # type: ignore[no-untyped-def]
    # A fresh backend with raw_llama's context settings (its Llama disables flash attention),
    # so both run the same kernels on the same batch shapes; logits then agree to ~1e-4.
    with LlamaCppBackend(default_gguf, n_ctx=512, n_threads=2, flash_attn="off") as fresh:
        chunks = list(Client(fresh).stream(QA, max_tokens=6))
    ids = raw_llama.tokenize(QA.encode())
    raw_llama.reset()
    raw_llama.eval(
        ids
    )  # then one token per decode, as generation does (batch shapes change numerics)
    for c in chunks[:-1]:
        raw_llama.eval([c.token_id])
    scores = np.asarray(raw_llama.scores[: raw_llama.n_tokens], dtype=np.float64)
    for i, chunk in enumerate(chunks):
        x = scores[len(ids) - 1 + i]
        lse = np.logaddexp.reduce(x)
        p = np.exp(x - lse)
        assert chunk.token_id == int(x.argmax())
        assert chunk.logprob == pytest.approx(x[chunk.token_id] - lse, abs=1e-3)
        assert chunk.entropy == pytest.approx(float(-(p * (x - lse)).sum()), abs=1e-3)


def test_result_summary_is_consistent(backend: LlamaCppBackend) -> None:
    stream = Client(backend).stream(QA, max_tokens=12)
    chunks = list(stream)
    r = stream.result
    assert r.text == "".join(c.text for c in chunks)
    assert r.source == "local" and all(c.source == "local" for c in chunks)
    lps = [c.logprob for c in chunks]
    assert r.confidence.mean_logprob == pytest.approx(sum(lps) / len(lps))
    assert r.confidence.min_logprob == pytest.approx(min(lps))
    assert all(c.logprob <= 0 and c.entropy >= 0 for c in chunks)
    assert r.timings.decode_tokens_per_s > 0


def test_stop_sequence_and_max_tokens(backend: LlamaCppBackend) -> None:
    client = Client(backend)
    r = client.generate(QA, max_tokens=40, stop=["\n"])
    assert r.finish_reason == "stop"
    assert "\n" not in r.text
    assert r.text.strip() == "Tokyo"
    r = client.generate("Count: one, two, three,", max_tokens=5)
    assert r.finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_chat_messages_use_the_plain_template(backend: LlamaCppBackend) -> None:
    assert backend.info.details["chat_template"] == "plain"
    r = Client(backend).generate(
        [{"role": "user", "content": "What is the capital of Italy?"}], max_tokens=48
    )
    assert "User:" not in r.text


def test_seeded_sampling_is_reproducible(backend: LlamaCppBackend) -> None:
    client = Client(backend)
    a = client.generate(PROMPTS[1], max_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    b = client.generate(PROMPTS[1], max_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    assert a.text == b.text
    others = {
        client.generate(PROMPTS[1], max_tokens=16, temperature=1.0, seed=s).text for s in (1, 2, 3)
    }
    assert len(others | {a.text}) > 1


def test_cancel_stops_within_a_token_and_frees_the_model(backend: LlamaCppBackend) -> None:
    client = Client(backend)
    stream = client.stream(PROMPTS[1], max_tokens=200)
    got = [next(stream) for _ in range(3)]
    stream.cancel()
    rest = list(stream)
    assert stream.result.finish_reason == "cancelled"
    assert len(rest) <= 1
    assert stream.result.usage.completion_tokens <= len(got) + 1
    assert client.generate(QA, max_tokens=3).usage.completion_tokens == 3


def test_concurrent_callers_get_the_same_answers_as_sequential(backend: LlamaCppBackend) -> None:
    client = Client(backend)
    expected = {p: client.generate(p, max_tokens=16).text for p in PROMPTS}
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(p: str) -> None:
        try:
            got[p] = client.generate(p, max_tokens=16).text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert got == expected


def test_async_client_streams_the_same_tokens(backend: LlamaCppBackend) -> None:
    sync_ids = [c.token_id for c in Client(backend).stream(QA, max_tokens=8)]

    async def main() -> list[int]:
        client = AsyncClient(backend)
        ids = [c.token_id async for c in client.stream(QA, max_tokens=8)]
        results = await asyncio.gather(*(client.generate(QA, max_tokens=8) for _ in range(3)))
        assert len({r.text for r in results}) == 1
        return ids

    assert asyncio.run(main()) == sync_ids


def test_prefix_cache_reuse_gives_identical_results(backend: LlamaCppBackend) -> None:
    client = Client(backend)
    long_prefix = QA + " Tokyo\nQ: What is the capital of Spain?\nA:"
    first = client.generate(long_prefix, max_tokens=6)
    client.generate(QA, max_tokens=6)  # shares a prefix: the cache is trimmed, not rebuilt
    again = client.generate(long_prefix, max_tokens=6)
    assert first.text == again.text
    # The suffix is prefilled in a different batch shape than the first time, which moves a
    # Q4 model's logits by ~1e-3: equal text, near-equal confidence.
    assert first.confidence.mean_logprob == pytest.approx(again.confidence.mean_logprob, abs=2e-2)
    assert first.usage == again.usage


def test_local_client_from_settings(model_cache: Path) -> None:
    from edgecloud.config import Settings

    settings = Settings.load(cache_dir=model_cache)
    with Client.local(settings=settings, n_threads=2, n_ctx=512) as client:
        assert client.backend.n_ctx == 512
        r = client.generate(QA, max_tokens=4, stop="\n")
        assert r.model == "gemma-3-270m-q4_k_m"
        assert not math.isnan(r.confidence.mean_entropy)


def test_async_client_opens_in_a_worker_thread(model_cache: Path, backend: LlamaCppBackend) -> None:
    from edgecloud.config import Settings

    settings = Settings.load(cache_dir=model_cache)

    async def main() -> tuple[int, str]:
        async with await AsyncClient.open(settings=settings, n_threads=2, n_ctx=512) as client:
            stream = client.stream(QA, max_tokens=4, stop="\n")
            text = "".join([c.text async for c in stream])
            assert stream.result.text == text and stream.result.model == "gemma-3-270m-q4_k_m"
            return client.backend.n_ctx, text

    n_ctx, text = asyncio.run(main())
    assert n_ctx == 512
    assert text == Client(backend).generate(QA, max_tokens=4, stop="\n").text  # greedy: same


def test_local_client_uses_the_settings_it_loaded(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Client.local() with no settings reads EDGECLOUD_CONFIG; the cloud endpoints found
    # there must switch on the hybrid engine, not only the model settings.
    cfg = tmp_path / "device.toml"
    cfg.write_text(
        f'cache_dir = "{model_cache}"\n[device.model]\nn_threads = 2\nn_ctx = 512\n'
        "[device.generation]\nmax_tokens = 3\n"
        f'[device.log]\npath = "{tmp_path / "log.db"}"\n'
        '[[device.cloud.endpoints]]\ntarget = "127.0.0.1:9"\ntls = false\n'
    )
    monkeypatch.setenv("EDGECLOUD_CONFIG", str(cfg))
    with Client.local() as client:
        assert client.engine is not None
        assert client.backend.n_ctx == 512
        r = client.generate(QA, route="local")
        assert r.usage.completion_tokens == 3  # the configured generation defaults apply
