"""The CloudBackend seam: a scripted engine (no model) served by the real InferenceServicer on a
real grpc.aio server (127.0.0.1, port 0), streamed from with the real CloudClient.

What crosses the seam is what any engine (torch, an upstream API, Ray Serve) must honour:
per-token signals, continuation after an assistant prefix (verified on request, with a
retraction of what the engine rejects), adapters by id, model info and load, cancellation; what the service adds itself (the max_new_tokens limit, knowledge
passages in the request and in the Finish) holds whatever the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from grpc import aio

from edgecloud._proto.v1 import inference_pb2_grpc as pb_grpc
from edgecloud.cloud import CloudBackend, CloudRequest, KnowledgeBase
from edgecloud.cloud._service import InferenceServicer
from edgecloud.common.encoder import SentenceEncoder
from edgecloud.config import CloudConfig
from edgecloud.errors import InvalidRequestError, RemoteError, UnknownAdapterError
from edgecloud.transport import CloudClient
from edgecloud.types import Chunk, Finish, Retraction
from tests.fakes_cloud import ScriptedEngine
from tests.integration._cloudproc import collect

T = TypeVar("T")
MANUAL = Path(__file__).parents[2] / "bench" / "data" / "fleet_manual"
CONFIG: dict[str, Any] = {"insecure": True, "max_new_tokens": 8, "default_max_tokens": 4}


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


@asynccontextmanager
async def serving(
    engine: CloudBackend, kb: KnowledgeBase | None = None, **overrides: Any
) -> AsyncIterator[CloudClient]:
    """The engine behind the real servicer on a loopback port, and a client on it."""
    config = CloudConfig.model_validate({**CONFIG, **overrides})
    server = aio.server()
    pb_grpc.add_InferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        InferenceServicer(engine, config, knowledge=kb), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = CloudClient(f"127.0.0.1:{port}", tls=False, max_attempts=1)
    try:
        yield client
    finally:
        await client.close()
        await server.stop(0)


def test_tokens_signals_and_finish_cross_the_wire() -> None:
    engine = ScriptedEngine("the engine answers slowly")

    async def scenario() -> tuple[list[Chunk], Finish]:
        async with serving(engine) as c:
            return await collect(c, "Why?", max_tokens=8, request_id="req-1")

    chunks, finish = run(scenario)
    assert [ch.text for ch in chunks] == ["the", " engine", " answers", " slowly"]
    assert [ch.token_id for ch in chunks] == [100, 101, 102, 103]
    assert [ch.logprob for ch in chunks] == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    assert [ch.entropy for ch in chunks] == pytest.approx([0.5, 1.5, 2.5, 3.5])
    assert {ch.source for ch in chunks} == {"cloud"} and [ch.index for ch in chunks] == [0, 1, 2, 3]
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens) == ("stop", 1, 4)
    assert finish.passages == ()
    [req] = engine.requests
    assert req.prompt == "Why?" and req.request_id == "req-1" and req.adapter_id is None
    assert req.deadline is not None and req.passages == ()


def test_the_engine_continues_after_the_assistant_prefix() -> None:
    engine = ScriptedEngine("the engine answers slowly")

    async def scenario() -> tuple[list[Chunk], Finish]:
        async with serving(engine) as c:
            return await collect(c, "Why?", max_tokens=8, assistant_prefix="the engine")

    chunks, finish = run(scenario)
    assert [ch.text for ch in chunks] == [" answers", " slowly"]
    assert [ch.index for ch in chunks] == [0, 1]  # counted after the prefix
    assert finish.completion_tokens == 2 and finish.prompt_tokens == 3
    assert engine.requests[0].assistant_prefix == "the engine"


async def every_event(c: CloudClient, prompt: str, **kwargs: Any) -> list[Any]:
    return [event async for event in c.stream(prompt, **kwargs)]


def test_a_verified_prefix_is_retracted_where_the_engine_disagrees() -> None:
    engine = ScriptedEngine("the engine answers slowly")

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with serving(engine) as c:
            wrong = await every_event(c, "Why?", max_tokens=8, temperature=0.5,
                                      assistant_prefix="the motor answers", verify_prefix=True,
                                      prefix_logprobs=[-0.25, -3.5, -0.5])  # fmt: skip
            right = await every_event(
                c, "Why?", max_tokens=8, assistant_prefix="the engine", verify_prefix=True
            )
            return wrong, right

    wrong, right = run(scenario)
    assert wrong[0] == Retraction(kept=3, rejected=" motor answers", kept_tokens=1)
    assert [(ch.text, ch.index) for ch in wrong[1:-1]] == [
        (" engine", 0), (" answers", 1), (" slowly", 2)
    ]  # fmt: skip
    assert isinstance(wrong[-1], Finish) and wrong[-1].completion_tokens == 3
    # An agreeing prefix: no retraction, the stream continues after it.
    assert [ch.text for ch in right[:-1]] == [" answers", " slowly"]
    first, second = engine.requests
    assert first.verify_prefix and first.prefix_logprobs == (-0.25, -3.5, -0.5)
    assert second.verify_prefix and second.prefix_logprobs == ()


def test_without_verify_prefix_the_prefix_is_continued_as_sent() -> None:
    engine = ScriptedEngine("the engine answers slowly")

    async def scenario() -> list[Any]:
        async with serving(engine) as c:
            return await every_event(c, "Why?", max_tokens=8, assistant_prefix="the motor")

    events = run(scenario)
    assert [ch.text for ch in events[:-1]] == [" answers", " slowly"]
    assert not engine.requests[0].verify_prefix


def test_prefix_logprobs_that_are_not_log_probabilities_are_invalid() -> None:
    engine = ScriptedEngine()

    async def scenario() -> None:
        async with serving(engine) as c:
            with pytest.raises(InvalidRequestError, match="prefix_logprobs"):
                await every_event(c, "x", assistant_prefix="the", verify_prefix=True,
                                  prefix_logprobs=[0.5])  # fmt: skip
            with pytest.raises(InvalidRequestError, match="verify_prefix"):
                await every_event(c, "x", assistant_prefix="the", prefix_logprobs=[-0.5])

    run(scenario)
    assert engine.requests == []


class _OutOfTurn(ScriptedEngine):
    """An engine that breaks the contract: it retracts unasked, or after its first chunk."""

    async def generate(self, request: CloudRequest) -> Any:
        if not request.verify_prefix:
            yield Retraction(0, request.assistant_prefix, 0)
        yield Chunk("a", 1, -0.1, 0.1, "cloud", 0)
        yield Retraction(0, request.assistant_prefix, 0)
        yield Finish("stop", 1, 1)


@pytest.mark.parametrize("verify", [True, False])
def test_the_client_refuses_a_retraction_out_of_turn(verify: bool) -> None:
    async def scenario() -> list[Any]:
        async with serving(_OutOfTurn()) as c:
            seen: list[Any] = []
            with pytest.raises(RemoteError, match="out of turn"):
                async for event in c.stream("x", assistant_prefix="the", verify_prefix=verify):
                    seen.append(event)
            return seen

    assert [type(e) for e in run(scenario)] == ([Chunk] if verify else [])


def test_limits_defaults_and_adapters_by_id() -> None:
    engine = ScriptedEngine("a b c d e f g h i j", adapters=["alpha"])

    async def scenario() -> tuple[Finish, Finish]:
        async with serving(engine) as c:
            _, default = await collect(c, "x")  # no max_tokens: the service default (4)
            _, capped = await collect(c, "x", max_tokens=8, adapter_id="alpha")
            with pytest.raises(InvalidRequestError, match="exceeds the service limit 8"):
                await collect(c, "x", max_tokens=9)
            with pytest.raises(UnknownAdapterError, match="beta"):
                await collect(c, "x", adapter_id="beta")
            info = await c.info()
            assert info["models"] == ["scripted-cloud"] and info["adapters"] == ["alpha"]
            assert info["backend"] == "scripted" and info["device"] == "nowhere"
            assert info["load"]["max_running_sequences"] == 4
            return default, capped

    default, capped = run(scenario)
    assert (default.reason, default.completion_tokens) == ("length", 4)
    assert (capped.reason, capped.completion_tokens) == ("length", 8)
    # The over-limit request never reached the engine; the unknown adapter did and failed there.
    assert [r.params.max_tokens for r in engine.requests] == [4, 8]
    assert [r.adapter_id for r in engine.requests] == [None, "alpha"]


@pytest.mark.model
def test_passages_go_into_the_request_and_come_back_in_the_finish(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "heron.md").write_text((MANUAL / "heron.md").read_text())
    (docs / "otter.md").write_text((MANUAL / "otter.md").read_text())
    kb = KnowledgeBase(docs, SentenceEncoder(), index_dir=tmp_path / "idx")
    engine = ScriptedEngine("forty kilograms")
    question = "How much weight can the Heron robot carry?"

    async def scenario() -> tuple[Finish, Finish]:
        async with serving(engine, kb, knowledge={"top_k": 2}) as c:
            _, grounded = await collect(c, question)
            _, plain = await collect(c, question, skip_knowledge=True)
            return grounded, plain

    grounded, plain = run(scenario)
    assert 1 <= len(grounded.passages) <= 2 and grounded.passages[0].source == "heron.md"
    first, second = engine.requests
    assert first.passages == grounded.passages  # what the engine got is what is reported
    assert grounded.passages[0].text in engine.prompts[0]
    assert second.passages == () and plain.passages == ()
    assert grounded.prompt_tokens > plain.prompt_tokens


def test_a_client_leaving_mid_stream_closes_the_engine_stream() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine(" ".join(["w"] * 20), gate=gate)

    async def scenario() -> None:
        async with serving(engine) as c:
            stream = c.stream("x", max_tokens=8)
            gate.set()
            first = await stream.__anext__()
            assert isinstance(first, Chunk)
            gate.clear()  # the engine now waits inside the stream
            await stream.aclose()  # type: ignore[attr-defined]
            for _ in range(100):
                if engine.running == 0:
                    break
                await asyncio.sleep(0.02)

    run(scenario)
    assert engine.running == 0 and engine.cancelled == 1


def test_a_request_whose_deadline_already_passed_fails_at_once() -> None:
    """A proxy or a slow queue can deliver a request after its own deadline
    (``deadline_unix_ms``): it fails with DEADLINE_EXCEEDED and the engine never sees it."""
    import grpc

    from edgecloud._proto.v1 import inference_pb2 as pb

    engine = ScriptedEngine("the engine answers slowly")

    async def scenario() -> grpc.StatusCode:
        async with serving(engine) as c:
            stub = pb_grpc.InferenceServiceStub(c._channel)  # type: ignore[no-untyped-call]
            late = pb.GenerateRequest(prompt="Why?", deadline_unix_ms=1)
            try:
                async for _ in stub.Generate(late, timeout=10):
                    pass
            except aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    assert run(scenario) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert engine.requests == []
