"""Shadow checks: confident local answers also asked of the cloud, off the answer's path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgecloud.adapters._manifest import AdapterScope
from edgecloud.common.records import EscalationRecord
from edgecloud.config import DeviceCloudConfig, DeviceShadowConfig, RouterConfig
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import CancelScope, HybridEngine
from edgecloud.device._shadow import ShadowStats
from edgecloud.types import ChatMessage, Chunk, Finish, SamplingParams
from tests.fakes import ScriptedBackend, answer
from tests.fakes_cloud import FakeCloud
from tests.unit.device.test_adapter_scope import WordEncoder

T = TypeVar("T")
# ScriptedBackend's token i has logprob -0.5 * (i + 1): CALM never trips on four tokens.
CALM = RouterConfig(window=2, min_mean_logprob=-50.0, min_tokens=2)
ANSWER = "one two three four"  # what the device says, confidently, to every prompt
PARAMS = SamplingParams(max_tokens=4, stop=["\n"])


def make(
    cloud: FakeCloud,
    tmp_path: Path,
    *,
    backend: ScriptedBackend | None = None,
    router: RouterConfig = CALM,
    replay_rate: float = 0.0,
    **shadow: Any,
) -> HybridEngine:
    pool = EndpointPool([Endpoint(cloud, CircuitBreaker(failures=5, cooldown_s=60))])
    return HybridEngine(
        backend or ScriptedBackend(ANSWER), pool=pool, router=router,
        cloud=DeviceCloudConfig(first_token_timeout_s=5.0), log=EscalationLog(tmp_path / "l.db"),
        replay_rate=replay_rate, shadow=DeviceShadowConfig(**{"rate": 1.0, **shadow}), seed=0,
    )  # fmt: skip


def run(engine: HybridEngine, body: Callable[[], Awaitable[T]]) -> tuple[T, list[EscalationRecord]]:
    """``body``'s result and the records logged once the shadow checks it started ended."""

    async def main() -> tuple[T, list[EscalationRecord]]:
        try:
            result = await body()
            await engine.wait_shadows()
            assert engine.log is not None
            return result, engine.log.all()
        finally:
            await engine.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize(("cloud_says", "agree"), [("a different answer", False), (ANSWER, True)])
def test_a_confident_answer_is_checked_after_it_was_delivered(
    tmp_path: Path, cloud_says: str, agree: bool
) -> None:
    cloud = FakeCloud("a", answer=cloud_says, delay=0.5)  # slow: the answer must not wait
    engine = make(cloud, tmp_path)
    engine.adapter_version = 3

    async def body() -> tuple[str, Finish, float, Any, int]:
        t = time.perf_counter()
        text, finish = await answer(engine)
        took = time.perf_counter() - t
        assert engine.log is not None
        before = (engine.shadow_stats(), len(engine.log))
        engine.adapter_version = 4  # a swap before the cloud replies: 3 gave the answer
        return text, finish, took, before, engine.usage.since(time.monotonic(), 3600)

    (text, finish, took, before, spent_before), records = run(engine, body)
    assert text == ANSWER and finish.reason == "stop" and finish.route is not None
    assert not finish.route.escalated
    assert took < 0.5 and before == ({}, 0) and spent_before == 0  # nothing waited for it
    assert engine.shadow_stats() == {3: ShadowStats(checked=1, disagreed=int(not agree))}
    assert engine.shadow_stats()[3].rate == (0.0 if agree else 1.0)
    [call] = cloud.calls
    assert call["params"] == PARAMS and call["assistant_prefix"] == ""  # asked from scratch
    [rec] = records
    assert rec.extra["kind"] == "shadow" and rec.extra["agree"] is agree
    assert rec.extra["adapter_version"] == 3
    assert rec.local_partial == ANSWER and rec.cloud_answer == cloud_says
    assert rec.extra["passages"] == [{"text": "fact", "source": "manual.md", "score": 0.9}]
    assert rec.extra["stop"] == ["\n"] and rec.extra["endpoint"] == "a"
    assert rec.extra["logprobs"] == [-0.5, -1.0, -1.5, -2.0]  # as `router calibrate` reads them
    assert rec.route_policy == "default"
    # The cloud's tokens count against the device's budget like any cloud use.
    assert engine.usage.since(time.monotonic(), 3600) == 7 + len(cloud_says.split())


def test_only_confident_public_answers_the_device_finished_are_checked(tmp_path: Path) -> None:
    cloud = FakeCloud("a", answer=ANSWER)
    engine = make(cloud, tmp_path)

    async def body() -> None:
        await answer(engine, params=PARAMS.model_copy(update={"max_tokens": 2}))  # cut short
        await answer(engine, route="local")  # forced: the router did not judge it
        await answer(engine, "my email is jane@example.com")  # private

    run(engine, body)
    assert cloud.calls == [] and engine.shadow_stats() == {}

    off = make(cloud, tmp_path, rate=0.0)

    async def twice() -> None:
        await answer(off)
        await answer(off)

    _, records = run(off, twice)
    assert cloud.calls == [] and off.shadow_stats() == {} and records == []


@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_checks_beyond_max_in_flight_are_skipped_not_queued(
    tmp_path: Path, max_in_flight: int
) -> None:
    cloud = FakeCloud("a", answer=ANSWER, delay=0.3)
    # Every confident answer is sampled for replay too: a checked one gets the check's
    # record instead, a skipped one its replay record.
    engine = make(cloud, tmp_path, replay_rate=1.0, max_in_flight=max_in_flight)

    async def body() -> None:
        for _ in range(3):
            await answer(engine)

    _, records = run(engine, body)
    assert len(cloud.calls) == max_in_flight
    assert engine.shadow_stats() == {None: ShadowStats(checked=max_in_flight, disagreed=0)}
    kinds = sorted(r.extra["kind"] for r in records)
    assert kinds == ["replay"] * (3 - max_in_flight) + ["shadow"] * max_in_flight


def test_no_check_once_the_budget_is_spent(tmp_path: Path) -> None:
    cloud = FakeCloud("a", answer=ANSWER, delay=0.5)
    router = CALM.model_copy(update={"budget_tokens_per_hour": 5})
    slow = ScriptedBackend(ANSWER, delay=0.05)
    engine = make(cloud, tmp_path, backend=slow, router=router, max_in_flight=2)

    async def body() -> None:
        await answer(engine)  # checked: the budget is untouched
        second = engine.stream("Q: again\nA:", PARAMS, cancel=CancelScope())
        first = await anext(second)  # routed while the budget still allows the cloud
        assert isinstance(first, Chunk) and engine.usage.since(time.monotonic(), 3600) == 0
        await engine.wait_shadows()  # the first check spends 11 tokens of the 5
        rest = [ev async for ev in second]
        assert isinstance(rest[-1], Finish) and rest[-1].reason == "stop"

    run(engine, body)
    assert len(cloud.calls) == 1
    assert engine.shadow_stats() == {None: ShadowStats(checked=1, disagreed=0)}


@pytest.mark.parametrize(
    ("cloud", "timeout_s", "why"),
    [
        (FakeCloud("a", fail_after=0), 60.0, "went away"),
        (FakeCloud("a", answer=ANSWER, fail_after=2), 60.0, "went away"),
        (FakeCloud("a", answer=ANSWER, delay=3.0), 0.2, "no answer within 0.2 s"),
    ],
    ids=["before-answering", "mid-answer", "timeout"],
)
def test_a_failed_check_loses_nothing_and_raises_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cloud: FakeCloud, timeout_s: float, why: str
) -> None:
    engine = make(cloud, tmp_path, replay_rate=1.0, timeout_s=timeout_s)
    engine.adapter_version = 2

    async def body() -> str:
        text, _ = await answer(engine)
        engine.adapter_version = 3
        return text

    with caplog.at_level(logging.INFO, logger="edgecloud.device.hybrid"):
        text, records = run(engine, body)
    assert text == ANSWER and engine.shadow_stats() == {}
    dropped = [r for r in caplog.records if "shadow check dropped" in r.getMessage()]
    assert [r.levelno for r in dropped] == [logging.INFO] and why in dropped[0].getMessage()
    [rec] = records  # the replay record it was sampled for, of the version that answered
    assert rec.extra["kind"] == "replay" and rec.local_partial == ANSWER
    assert rec.extra["adapter_version"] == 2 and rec.latency_ms < 1000


def test_aclose_cancels_the_checks_in_flight(tmp_path: Path) -> None:
    cloud = FakeCloud("a", answer=ANSWER, delay=30.0)
    engine = make(cloud, tmp_path)

    async def body() -> float:
        await answer(engine)
        await asyncio.sleep(0.05)
        assert len(cloud.calls) == 1  # the check is waiting on the cloud
        t = time.perf_counter()
        await engine.aclose()
        took = time.perf_counter() - t
        assert asyncio.all_tasks() == {asyncio.current_task()}  # no check is left running
        return took

    took = asyncio.run(body())
    assert took < 2.0 and cloud.closes == 1 and engine.shadow_stats() == {}
    assert len(EscalationLog(tmp_path / "l.db")) == 0  # nothing was recorded


class ScopedBackend(ScriptedBackend):
    """The scripted device model, told when to answer without its adapter."""

    def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        cancel: Any = None,
        *,
        prefix: str = "",
        use_adapter: bool = True,
    ) -> Any:
        self.used_adapter = use_adapter
        return super().stream(prompt, params, cancel, prefix=prefix)


def test_an_answer_outside_the_adapter_scope_counts_for_the_base_model(tmp_path: Path) -> None:
    cloud = FakeCloud("a", answer="five")
    backend = ScopedBackend(ANSWER)
    engine = make(cloud, tmp_path, backend=backend)
    encoder = WordEncoder()
    nothing = AdapterScope(encoder=encoder.identity, weights=(0.0,) * encoder.dim, bias=-5.0)
    engine.set_adapter_scope(nothing, encoder=encoder)  # type: ignore[arg-type]
    engine.adapter_version = 7

    _, [rec] = run(engine, lambda: answer(engine))
    assert backend.used_adapter is False
    assert engine.shadow_stats() == {None: ShadowStats(checked=1, disagreed=1)}
    # The record names the version that ran and that the request was outside its scope.
    assert rec.extra["adapter_version"] == 7 and rec.signals["adapter_in_scope"] is False
