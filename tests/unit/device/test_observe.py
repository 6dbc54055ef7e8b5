"""The device's request metrics and request ids, on project fakes (no network): how each
way a request can end is counted, and where the request's id is bound."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from edgecloud.common.logs import bind_request_id, current_request_id
from edgecloud.config import DeviceCloudConfig, RouterConfig
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import CancelScope, HybridEngine
from edgecloud.errors import TransportError
from edgecloud.types import Chunk, SamplingParams
from tests import scrape
from tests.fakes import ScriptedBackend, answer
from tests.fakes_cloud import FakeCloud

TRIP = RouterConfig(window=2, min_mean_logprob=-1.2, min_tokens=2)  # hands off at token 3
PARAMS = SamplingParams(max_tokens=8)
WORDS = "one two three four five six seven eight"


def engine(clouds: list[FakeCloud], log: EscalationLog | None = None) -> HybridEngine:
    pool = EndpointPool([Endpoint(c, CircuitBreaker(2, 60)) for c in clouds])
    return HybridEngine(ScriptedBackend(WORDS), pool=pool, router=TRIP,
                        cloud=DeviceCloudConfig(first_token_timeout_s=1.0), log=log)  # fmt: skip


def test_a_cloud_that_dies_mid_answer_is_a_fallback_and_a_mixed_answer(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    hybrid = engine([FakeCloud("a", answer="one two three x y z", fail_after=1)], log)
    before = scrape.device()
    _, finish = asyncio.run(answer(hybrid, "hi", PARAMS))
    after = scrape.device()
    assert finish.route is not None and finish.route.fallback
    assert after.delta(before, "edgecloud_device_fallbacks_total") == 1
    assert after.delta(before, "edgecloud_device_handoffs_total") == 1
    assert after.delta(before, "edgecloud_requests_total", side="device", route="mixed",
                       finish=finish.reason) == 1  # fmt: skip
    [record] = log.all()
    assert len(record.extra["request_id"]) == 32


def test_an_unreachable_cloud_counts_as_a_fallback_but_an_offline_device_does_not() -> None:
    down = engine([FakeCloud("down", healthy=False)])
    asyncio.run(down.pool.probe())  # type: ignore[union-attr]
    offline = HybridEngine(ScriptedBackend(WORDS), pool=None, router=TRIP,
                           cloud=DeviceCloudConfig())  # fmt: skip
    before = scrape.device()
    _, finish = asyncio.run(answer(down, "hi", PARAMS))
    middle = scrape.device()
    asyncio.run(answer(offline, "hi", PARAMS))
    after = scrape.device()
    assert finish.route is not None and finish.route.policy == "connectivity"
    assert middle.delta(before, "edgecloud_device_fallbacks_total") == 1
    assert after.delta(middle, "edgecloud_device_fallbacks_total") == 0
    assert after.delta(before, "edgecloud_requests_total", side="device", route="local",
                       finish="stop") == 2  # fmt: skip


def test_a_request_that_raises_or_is_abandoned_is_still_counted() -> None:
    hybrid = engine([FakeCloud("dead", fail_after=0)])

    async def abandon() -> None:
        stream = hybrid.stream("hi", PARAMS, route="local", cancel=CancelScope())
        async for _ in stream:
            break  # the app stops reading after one chunk
        await stream.aclose()

    before = scrape.device()
    with pytest.raises(TransportError):
        asyncio.run(answer(hybrid, "hi", PARAMS, route="cloud"))
    asyncio.run(abandon())
    after = scrape.device()
    assert after.delta(before, "edgecloud_requests_total", side="device", route="cloud",
                       finish="error") == 1  # fmt: skip
    assert after.delta(before, "edgecloud_requests_total", side="device", route="local",
                       finish="cancelled") == 1  # fmt: skip
    assert after.delta(before, "edgecloud_tokens_total", side="device", source="local") == 1


def test_the_id_is_bound_while_the_engine_works_not_while_the_app_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen_by_cloud: list[str | None] = []

    class Spy(FakeCloud):
        async def stream(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            seen_by_cloud.append(current_request_id())
            async for ev in super().stream(*args, **kwargs):
                yield ev

    hybrid = engine([Spy("a")])

    async def main() -> list[str | None]:
        seen_by_app = []
        with bind_request_id("outer"):  # the caller's id is taken when none is given
            stream = hybrid.stream("hi", PARAMS, cancel=CancelScope())
        async for ev in stream:
            if isinstance(ev, Chunk):
                seen_by_app.append(current_request_id())
        async for _ in hybrid.stream("hi", PARAMS, cancel=CancelScope(), request_id="given"):
            pass
        return seen_by_app

    with caplog.at_level(logging.INFO, logger="edgecloud.device.requests"):
        seen_by_app = asyncio.run(main())
    assert seen_by_cloud == ["outer", "given"]
    assert set(seen_by_app) == {None}
    assert [r.message.split(":")[0] for r in caplog.records] == ["request answered"] * 2
