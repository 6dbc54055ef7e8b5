import asyncio
import math
import threading
import time

import pytest

from edgecloud import AsyncClient, Client, InvalidRequestError
from edgecloud.common.text import normalize_prompt
from edgecloud.device.backends._base import FifoLock
from edgecloud.types import ChatMessage, SamplingParams
from tests.fakes import ScriptedBackend


def test_stream_and_result_statistics() -> None:
    client = Client(ScriptedBackend())
    stream = client.stream("hello", max_tokens=3)
    chunks = list(stream)
    assert [c.text for c in chunks] == ["one", " two", " three"]
    r = stream.result
    assert r is not None
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
    assert stream.result is not None
    assert stream.result.finish_reason == "cancelled"
    assert len(rest) <= 1
    assert client.generate("again").finish_reason == "stop"  # the backend is free again


def test_nan_confidence_when_no_tokens() -> None:
    client = Client(ScriptedBackend())
    stream = client.stream("x")
    stream.cancel()
    stream.close()
    assert stream.result is not None
    assert stream.result.confidence.tokens == 0
    assert math.isnan(stream.result.confidence.mean_logprob)


def test_async_stream_matches_sync() -> None:
    async def main() -> list[str]:
        client = AsyncClient(ScriptedBackend())
        stream = client.stream("x", max_tokens=4)
        texts = [c.text async for c in stream]
        assert stream.result is not None and stream.result.text == "one two three four"
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
