import asyncio
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgecloud.device
from edgecloud import AsyncClient, Client, InvalidRequestError, Settings
from edgecloud._client import ResultBuilder
from edgecloud.backends import TextBackend
from edgecloud.backends._base import FifoLock
from edgecloud.common.text import normalize_prompt
from edgecloud.errors import BackendClosedError, StreamNotFinishedError
from edgecloud.types import ChatMessage, Chunk, Finish, GenerationResult, SamplingParams
from tests.fakes import ScriptedBackend


def test_stream_and_result_statistics() -> None:
    client = Client(ScriptedBackend())
    stream = client.stream("hello", max_tokens=3)
    chunks = list(stream)
    assert [c.text for c in chunks] == ["one", " two", " three"]
    r = stream.result
    assert r.text == "one two three"
    assert r.finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (3, 3, 6)
    assert r.confidence.mean_logprob == pytest.approx(-1.0)
    assert r.confidence.min_logprob == pytest.approx(-1.5)
    assert r.confidence.mean_entropy == pytest.approx(1.0)
    assert r.source == "local"
    assert r.timings.time_to_first_token_s >= 0


def test_defaults_merge_with_overrides() -> None:
    backend = ScriptedBackend()
    client = Client(backend, defaults=SamplingParams(max_tokens=2, temperature=0.7))
    client.generate("x", stop="\n", seed=5)
    params = backend.seen[-1][1]
    assert (params.max_tokens, params.temperature, params.seed, params.stop) == (2, 0.7, 5, ("\n",))


@pytest.mark.parametrize(
    "prompt,match",
    [("", "empty"), ("   ", "empty"), ("bad \udcff text", "UTF-8"), (b"\xff\xfe", "UTF-8"),
     ([], "empty"), ([{"role": "robot", "content": "x"}], r"messages\[0\]"),
     ([{"role": "user", "content": "ok"}, {"role": "user", "content": "\ud800"}], r"messages\[1\]")],
)  # fmt: skip
def test_bad_prompts_raise_invalid_request(prompt: object, match: str) -> None:
    client = Client(ScriptedBackend())
    with pytest.raises(InvalidRequestError, match=match):
        client.stream(prompt)  # type: ignore[arg-type]


def test_dict_messages_become_chat_messages() -> None:
    assert normalize_prompt([{"role": "user", "content": "hi"}]) == [
        ChatMessage(role="user", content="hi")
    ]
    assert normalize_prompt(b"caf\xc3\xa9") == "café"


@pytest.mark.parametrize(
    "kw", [{"max_tokens": -1}, {"max_tokens": 10**9}, {"temperature": -1.0}, {"top_p": 2.0}]
)
def test_bad_params_raise_invalid_request(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError, match=next(iter(kw))):
        Client(ScriptedBackend()).stream("x", **kw)  # type: ignore[arg-type]


def test_cancel_from_another_thread_ends_the_stream() -> None:
    gate = threading.Event()
    client = Client(ScriptedBackend(step=gate))
    stream = client.stream("x", max_tokens=5)
    gate.set()
    first = next(stream)
    assert first.text == "one"
    stream.cancel()
    rest = list(stream)
    assert stream.result.finish_reason == "cancelled"
    assert len(rest) <= 1
    assert client.generate("again").finish_reason == "stop"  # the backend is free again


def test_nan_confidence_when_no_tokens() -> None:
    client = Client(ScriptedBackend())
    stream = client.stream("x")
    stream.cancel()
    stream.close()
    assert stream.result.confidence.tokens == 0
    assert math.isnan(stream.result.confidence.mean_logprob)


def test_async_stream_matches_sync() -> None:
    async def main() -> list[str]:
        client = AsyncClient(ScriptedBackend())
        stream = client.stream("x", max_tokens=4)
        texts = [c.text async for c in stream]
        assert stream.result.text == "one two three four"
        result = await client.generate("y")
        assert result.finish_reason == "stop"
        return texts

    assert asyncio.run(main()) == ["one", " two", " three", " four"]


def test_cancelling_the_consumer_task_cancels_generation() -> None:
    gate = threading.Event()
    backend = ScriptedBackend(step=gate)

    async def main() -> str:
        client = AsyncClient(backend)

        async def consume() -> None:
            async for _ in client.stream("x"):
                await asyncio.sleep(10)

        task = asyncio.create_task(consume())
        gate.set()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await asyncio.wait_for(client.generate("next", max_tokens=2), 5)
        return result.text

    assert asyncio.run(main()) == "one two"


def test_fifo_lock_grants_in_arrival_order_and_honours_cancel() -> None:
    lock = FifoLock()
    assert lock.acquire()
    order: list[int] = []
    cancelled = threading.Event()

    def waiter(i: int, cancel: threading.Event | None = None) -> None:
        if lock.acquire(cancel):
            order.append(i)
            lock.release()
        else:
            order.append(-i)

    threads = []
    for i in (1, 2, 3):
        t = threading.Thread(target=waiter, args=(i, cancelled if i == 2 else None))
        t.start()
        threads.append(t)
        time.sleep(0.05)
    cancelled.set()
    time.sleep(0.2)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [-2, 1, 3]


def test_abandoned_async_stream_frees_the_model() -> None:
    backend = ScriptedBackend(" ".join("w" * 40), delay=0.05)

    async def main() -> str:
        client = AsyncClient(backend)
        async for _ in client.stream("x"):
            break  # drop the stream without closing it
        result = await asyncio.wait_for(client.generate("next", max_tokens=2), 5)
        return result.text

    assert asyncio.run(main()) == "w w"
    assert backend.finishes == ["cancelled", "length"]


def test_bad_route_is_refused_on_a_local_client_too() -> None:
    client = Client(ScriptedBackend())
    with pytest.raises(InvalidRequestError, match="route must be"):
        client.stream("x", route="edge")
    with pytest.raises(InvalidRequestError, match="needs cloud endpoints"):
        client.stream("x", route="cloud")


def test_result_is_readable_once_the_stream_ended_and_not_before() -> None:
    client = Client(ScriptedBackend())
    stream = client.stream("x", max_tokens=2)
    assert not stream.finished
    with pytest.raises(StreamNotFinishedError, match="iterate it to the end"):
        _ = stream.result
    assert next(stream).text == "one"
    with pytest.raises(StreamNotFinishedError):
        _ = stream.result
    assert [c.text for c in stream] == [" two"]
    assert stream.finished and stream.result.text == "one two"


def test_async_result_is_readable_once_the_stream_ended_and_not_before() -> None:
    async def main() -> str:
        stream = AsyncClient(ScriptedBackend()).stream("x", max_tokens=2)
        assert not stream.finished
        with pytest.raises(StreamNotFinishedError):
            _ = stream.result
        texts = [c.text async for c in stream]
        assert texts == ["one", " two"] and stream.finished
        return stream.result.text

    assert asyncio.run(main()) == "one two"


class FailingBackend(ScriptedBackend):
    """Yields one token, then fails as a native runtime error translated by a backend would."""

    def stream(self, prompt: Any, params: SamplingParams, cancel: Any = None, *,
               prefix: str = "") -> Any:  # fmt: skip
        events = super().stream(prompt, params, cancel, prefix=prefix)

        def run() -> Any:
            yield next(iter(events))
            raise BackendClosedError("the model went away")

        return run()


def test_a_failed_stream_has_no_result() -> None:
    stream = Client(FailingBackend()).stream("x")
    with pytest.raises(BackendClosedError):
        list(stream)
    assert not stream.finished
    with pytest.raises(StreamNotFinishedError):
        _ = stream.result

    async def main() -> None:
        stream = AsyncClient(FailingBackend()).stream("x")
        with pytest.raises(BackendClosedError):
            async for _ in stream:
                pass
        assert not stream.finished
        with pytest.raises(StreamNotFinishedError):
            _ = stream.result

    asyncio.run(main())


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_generate_takes_the_typed_keywords_of_stream(cls: type[Client | AsyncClient]) -> None:
    import typing

    from typing_extensions import Unpack

    from edgecloud.types import GenerateOptions

    for fn in (cls.generate, cls.stream):
        hints = typing.get_type_hints(fn, include_extras=True)
        assert hints["options"] == Unpack[GenerateOptions]
    assert set(GenerateOptions.__annotations__) == {
        "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "route",
        "show_unverified", "speculative", "top_logprobs", "schema", "tools", "tool_choice",
    }  # fmt: skip


def test_an_unknown_option_is_a_clear_error() -> None:
    client = Client(ScriptedBackend())
    with pytest.raises(InvalidRequestError, match=r"unknown option\(s\) \['max_token'\]"):
        client.generate("x", max_token=3)  # type: ignore[call-arg]


def test_async_generate_passes_every_keyword_on() -> None:
    backend = ScriptedBackend()

    async def main() -> str:
        client = AsyncClient(backend)
        with pytest.raises(InvalidRequestError, match="route must be"):
            await client.generate("x", route="edge")
        r = await client.generate("x", max_tokens=2, temperature=0.5, top_p=0.9, top_k=7,
                                  seed=3, stop="\n", route="local")  # fmt: skip
        return r.text

    assert asyncio.run(main()) == "one two"
    p = backend.seen[-1][1]
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop) == (
        2, 0.5, 0.9, 7, 3, ("\n",)
    )  # fmt: skip


class SlowLoader:
    """Stands in for ``edgecloud.device.load_text_backend``: blocks like a real model load."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[dict[str, Any]] = []
        self.threads: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.backends: list[ScriptedBackend] = []

    def __call__(self, settings: Settings, **kwargs: Any) -> TextBackend:
        self.calls.append(kwargs)
        self.threads.append(threading.get_ident())
        self.started.set()
        self.release.wait(self.seconds)
        backend = ScriptedBackend()
        self.backends.append(backend)
        return backend


def test_async_open_loads_in_a_worker_thread_without_blocking_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loader = SlowLoader(0.3)
    monkeypatch.setattr(edgecloud.device, "load_text_backend", loader)
    settings = Settings.load(device={"generation": {"max_tokens": 2}})

    async def main() -> tuple[int, str]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            async with await AsyncClient.open(
                Path("m.gguf"), settings=settings, n_threads=2
            ) as client:
                during = ticks
                text = (await client.generate("x")).text
        finally:
            ticker.cancel()
        return during, text

    during, text = asyncio.run(main())
    assert during >= 10  # the loop ran on while the model loaded (0.3 s)
    assert text == "one two"  # the settings' generation defaults apply
    [call] = loader.calls
    assert call["model"] == Path("m.gguf") and call["n_threads"] == 2
    assert loader.threads[0] != threading.get_ident()
    assert loader.backends[0].closed  # async with closed it


def test_cancelling_async_open_closes_the_model_once_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loader = SlowLoader(10)
    monkeypatch.setattr(edgecloud.device, "load_text_backend", loader)

    async def main() -> None:
        opening = asyncio.create_task(AsyncClient.open(settings=Settings.load()))
        await asyncio.to_thread(loader.started.wait, 5)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        loader.release.set()
        for _ in range(100):
            if loader.backends and loader.backends[0].closed:
                return
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert loader.backends and loader.backends[0].closed


def test_async_local_still_loads_synchronously(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = SlowLoader(0)
    monkeypatch.setattr(edgecloud.device, "load_text_backend", loader)
    client = AsyncClient.local(settings=Settings.load(), n_ctx=256)
    assert loader.threads == [threading.get_ident()] and loader.calls[0]["n_ctx"] == 256
    assert asyncio.run(client.generate("x", max_tokens=1)).text == "one"


class RetractingBackend(ScriptedBackend):
    """Plays fixed chunks, as the hybrid engine sends them when the cloud rejects the end of
    the device's text: the first cloud chunk takes " three" back; a last empty chunk takes
    back " seven" too."""

    EVENTS = (
        Chunk("one", 1, -0.5, 1.0, "local", 0),
        Chunk(" two", 2, -1.0, 1.0, "local", 1),
        Chunk(" three", 3, -9.0, 3.0, "local", 2),
        Chunk(" six", 6, -0.1, 0.5, "cloud", 2, retracted=6),
        Chunk(" seven", 7, -0.1, 0.5, "cloud", 3),
        Chunk("", -1, 0.0, 0.0, "cloud", 4, retracted=6),
    )

    def stream(self, prompt: Any, params: SamplingParams, cancel: Any = None, *,
               prefix: str = "") -> Iterator[Chunk | Finish]:  # fmt: skip
        return iter([*self.EVENTS, Finish("stop", 3, 3)])


def _check_retracted(chunks: list[Chunk], result: GenerationResult) -> None:
    assert len(chunks) == 6 and chunks[3].retracted == 6
    assert result.text == "one two six"
    # the confidence describes the tokens that stand: " three" (logprob -9) is gone
    assert result.confidence.tokens == 3
    assert result.confidence.min_logprob == pytest.approx(-1.0)
    assert result.confidence.mean_entropy == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert result.source == "mixed"


def test_the_stream_applies_retractions_to_the_result() -> None:
    with Client(RetractingBackend()) as client:
        stream = client.stream("x")
        chunks = list(stream)
    _check_retracted(chunks, stream.result)


def test_the_async_stream_applies_retractions_to_the_result() -> None:
    async def main() -> tuple[list[Chunk], GenerationResult]:
        async with AsyncClient(RetractingBackend()) as client:
            stream = client.stream("x")
            chunks = [c async for c in stream]
            return chunks, stream.result

    _check_retracted(*asyncio.run(main()))


def test_a_result_whose_local_tokens_were_all_taken_back_is_from_the_cloud() -> None:
    builder = ResultBuilder("m", 0.0)
    builder.add(Chunk("one", 1, -0.5, 1.0, "local", 0), 0.1)
    builder.add(Chunk("uno", 5, -0.1, 0.5, "cloud", 0, retracted=3), 0.2)
    r = builder.finish(Finish("stop", 2, 1), 0.3)
    assert r.text == "uno" and r.source == "cloud" and r.confidence.tokens == 1


@pytest.mark.parametrize(
    "options,match",
    [({"speculative": -1}, "speculative must be"), ({"speculative": 65}, "speculative must be"),
     ({"speculative": True}, "speculative must be"), ({"show_unverified": 1}, "show_unverified")],
)  # fmt: skip
def test_hand_off_options_are_checked(options: dict[str, Any], match: str) -> None:
    client = Client(ScriptedBackend())
    with pytest.raises(InvalidRequestError, match=match):
        client.stream("x", **options)


def test_hand_off_options_do_not_reach_the_sampling_parameters() -> None:
    backend = ScriptedBackend()
    r = Client(backend).generate("x", max_tokens=2, speculative=4, show_unverified=False)
    assert r.text == "one two" and backend.seen[-1][1].max_tokens == 2
