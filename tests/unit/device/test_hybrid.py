"""The hybrid engine's routing, hand-off and failure handling, on project fakes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edgecloud import Client, InvalidRequestError
from edgecloud.config import DeviceCloudConfig, RouterConfig
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import HybridEngine
from edgecloud.errors import TransportError
from tests.fakes import ScriptedBackend
from tests.fakes_cloud import FakeCloud

# ScriptedBackend's token i has logprob -0.5 * (i + 1): the window mean sinks as it goes.
TRIP = RouterConfig(window=2, min_mean_logprob=-1.2, min_tokens=2)
CALM = RouterConfig(window=2, min_mean_logprob=-50.0, min_tokens=2)


def make(
    clouds: Sequence[FakeCloud],
    *,
    router: RouterConfig = TRIP,
    log: EscalationLog | None = None,
    words: str = "one two three four five six seven eight",
    **cloud_kw: Any,
) -> tuple[Client, ScriptedBackend]:
    backend = ScriptedBackend(words, delay=0.02)  # a token takes time, as on a device
    cfg = DeviceCloudConfig(first_token_timeout_s=cloud_kw.pop("first_token_timeout_s", 1.0))

    def engine() -> HybridEngine:
        pool = EndpointPool(
            [Endpoint(c, CircuitBreaker(failures=2, cooldown_s=60)) for c in clouds]
        )
        return HybridEngine(backend, pool=pool, router=router, cloud=cfg, log=log)

    return Client(backend, engine=engine), backend


def test_confident_answer_stays_local() -> None:
    cloud = FakeCloud("a")
    client, _ = make([cloud], router=CALM)
    r = client.generate("hi", max_tokens=4)
    assert r.text == "one two three four" and r.source == "local"
    assert r.route is not None and r.route.policy == "default" and not r.route.escalated
    assert cloud.calls == []


def test_mid_answer_handoff_continues_after_the_local_part() -> None:
    cloud = FakeCloud("a")
    client, backend = make([cloud])
    stream = client.stream("hi", max_tokens=10)
    chunks = list(stream)
    r = stream.result
    assert [c.source for c in chunks] == ["local"] * 3 + ["cloud"] * 3
    assert [c.index for c in chunks] == list(range(6))
    assert r.text == "one two three cloud says hello"
    assert r.source == "mixed"
    assert r.route is not None and r.route.policy == "confidence-window" and r.route.escalated
    assert r.route.local_tokens_before_handoff == 3
    assert r.route.endpoint == "a" and r.route.passages[0].source == "manual.md"
    assert cloud.calls[0]["assistant_prefix"] == "one two three"
    assert cloud.calls[0]["params"].max_tokens == 7  # what is left of the budget
    assert backend.finishes[0] == "cancelled"  # the local generation was stopped


def test_a_handoff_within_the_holdback_drops_the_unshown_tokens(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    cloud = FakeCloud("a")
    router = TRIP.model_copy(update={"holdback_tokens": 3})  # the window trips at token 3
    client, _ = make([cloud], router=router, log=log)
    stream = client.stream("hi", max_tokens=10, stop=["\n"])
    chunks = list(stream)
    r = stream.result
    assert r.route is not None
    assert [c.source for c in chunks] == ["cloud"] * 3  # the app never saw the local start
    assert r.text == " cloud says hello" and r.source == "cloud"
    assert r.route.escalated and r.route.local_tokens_before_handoff == 0
    assert cloud.calls[0]["assistant_prefix"] == ""  # the cloud answers from scratch
    [rec] = log.all()
    assert rec.local_partial == "" and rec.cloud_answer == " cloud says hello"
    assert rec.extra["stop"] == ["\n"]


def test_tokens_past_the_holdback_are_shown_and_continued() -> None:
    cloud = FakeCloud("a")
    router = TRIP.model_copy(update={"holdback_tokens": 2})
    client, _ = make([cloud], router=router)
    chunks = list(client.stream("hi", max_tokens=10))
    assert [c.source for c in chunks] == ["local"] * 3 + ["cloud"] * 3
    assert cloud.calls[0]["assistant_prefix"] == "one two three"


def test_a_confident_answer_shorter_than_the_holdback_is_delivered_whole() -> None:
    cloud = FakeCloud("a")
    client, _ = make([cloud], router=CALM.model_copy(update={"holdback_tokens": 8}))
    r = client.generate("hi", max_tokens=4)
    assert r.text == "one two three four" and r.source == "local" and cloud.calls == []


def test_confident_local_answers_are_sampled_for_replay(tmp_path: Path) -> None:
    cloud = FakeCloud("a")

    def run(rate: float, path: Path) -> list[Any]:
        log = EscalationLog(path)
        backend = ScriptedBackend("one two three four", delay=0.0)

        def build() -> HybridEngine:
            pool = EndpointPool([Endpoint(cloud, CircuitBreaker(2, 60))])
            return HybridEngine(backend, pool=pool, router=CALM,
                                cloud=DeviceCloudConfig(), log=log, replay_rate=rate, seed=0)  # fmt: skip

        client = Client(backend, engine=build)
        client.generate("hi", max_tokens=4, stop=["\n"])
        client.generate("hi", max_tokens=2)  # cut by max_tokens: not a finished answer
        client.generate("hi", max_tokens=4, route="local")  # forced: the router did not judge it
        records = log.all()
        client.close()
        return records

    [rec] = run(1.0, tmp_path / "a.db")
    assert rec.local_partial == "one two three four" and rec.cloud_answer == ""
    assert rec.extra["kind"] == "replay" and rec.extra["stop"] == ["\n"]
    assert run(0.0, tmp_path / "b.db") == [] and cloud.calls == []


def test_forced_cloud_route() -> None:
    cloud = FakeCloud("a")
    client, backend = make([cloud])
    r = client.generate("hi", route="cloud")
    assert r.source == "cloud" and r.route is not None and r.route.policy == "forced"
    assert backend.seen == []
    assert cloud.calls[0]["assistant_prefix"] == ""


def test_private_request_never_reaches_the_cloud() -> None:
    cloud = FakeCloud("a")
    client, _ = make([cloud])
    r = client.generate("my card is 4111 1111 1111 1111, what now?", max_tokens=8)
    assert r.source == "local" and r.route is not None and r.route.private
    assert cloud.calls == []
    with pytest.raises(InvalidRequestError, match="must stay on the device"):
        client.generate("mail jane@example.com", route="cloud")
    assert cloud.calls == []


def test_failover_to_the_next_endpoint_before_the_first_token() -> None:
    dead, alive = FakeCloud("dead", fail_after=0), FakeCloud("alive")
    client, _ = make([dead, alive])
    r = client.generate("hi", route="cloud")
    assert r.text == " cloud says hello" and r.route is not None and r.route.endpoint == "alive"
    assert len(dead.calls) == 1


def test_first_token_timeout_counts_as_failure() -> None:
    slow, fast = FakeCloud("slow", delay=2.0), FakeCloud("fast")
    client, _ = make([slow, fast], first_token_timeout_s=0.2)
    r = client.generate("hi", route="cloud")
    assert r.route is not None and r.route.endpoint == "fast"


def test_cloud_dying_mid_stream_is_finished_on_the_device() -> None:
    cloud = FakeCloud("a", words="alpha beta gamma delta", fail_after=2)
    client, backend = make([cloud])
    stream = client.stream("hi", max_tokens=9)
    chunks = list(stream)
    r = stream.result
    assert r.route is not None
    assert r.route.fallback is not None and "went away" in r.route.fallback
    assert [c.source for c in chunks[:5]] == ["local"] * 3 + ["cloud"] * 2
    assert all(c.source == "local" for c in chunks[5:]) and len(chunks) > 5
    assert backend.prefixes[-1] == "one two three alpha beta"  # resumed after both parts
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_demanded_cloud_outage_raises_and_breaker_opens() -> None:
    dead = FakeCloud("dead", fail_after=0)
    client, _ = make([dead])
    for _ in range(2):
        with pytest.raises(TransportError, match="demands the cloud"):
            client.generate("hi", route="cloud")
    assert len(dead.calls) == 2
    with pytest.raises(TransportError):  # breaker open: no endpoint is even tried
        client.generate("hi", route="cloud")
    assert len(dead.calls) == 2
    r = client.generate("hi", max_tokens=3)  # not demanded: the device answers
    assert r.text == "one two three"


def test_escalations_are_logged_and_uploaded(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    cloud = FakeCloud("a")
    client, _ = make([cloud], log=log)
    client.generate("why?", max_tokens=10)
    client.generate("my email is jane@example.com", max_tokens=10)  # private: no record
    [rec] = log.all()
    assert rec.prompt == "why?" and rec.local_partial == "one two three"
    assert rec.cloud_answer == " cloud says hello" and rec.route_policy == "confidence-window"
    assert rec.extra["passages"][0]["text"] == "fact"
    assert rec.extra["stop"] == [] and rec.extra["finish"] == "stop"  # where the answer ended
    assert client.upload_pending() == 1
    assert rec.id in cloud.uploaded and len(log) == 0


def test_budget_spent_keeps_answers_local() -> None:
    cloud = FakeCloud("a")
    router = TRIP.model_copy(update={"budget_tokens_per_hour": 5})
    client, _ = make([cloud], router=router)
    first = client.generate("hi", max_tokens=10)
    assert first.source == "mixed"  # 7 prompt + 3 completion tokens spent
    second = client.generate("hi", max_tokens=10)
    assert second.source == "local" and len(cloud.calls) == 1


def test_cancelling_during_the_cloud_part_ends_quietly() -> None:
    cloud = FakeCloud("a", words="w " * 30, delay=0.0)
    client, _ = make([cloud])
    stream = client.stream("hi", route="cloud", max_tokens=30)
    first = next(stream)
    assert first.source == "cloud"
    stream.close()  # cancel and drain: no error although the cloud part was demanded
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.route is not None and stream.result.route.fallback is None
    assert client.generate("hi", route="cloud", max_tokens=2).usage.completion_tokens == 2


def test_aclose_closes_the_endpoints_and_the_log_once(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    clouds = [FakeCloud("a"), FakeCloud("b")]
    pool = EndpointPool([Endpoint(c, CircuitBreaker()) for c in clouds])
    engine = HybridEngine(ScriptedBackend(), pool=pool, router=CALM, cloud=DeviceCloudConfig(),
                          log=log)  # fmt: skip

    async def close_twice() -> None:
        await engine.aclose()
        await engine.aclose()  # idempotent: nothing is closed twice

    asyncio.run(close_twice())
    assert [c.closes for c in clouds] == [1, 1]
    with pytest.raises(sqlite3.ProgrammingError):  # the log's database is closed
        len(log)


def test_an_offline_engine_closes_its_log(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    engine = HybridEngine(ScriptedBackend(), pool=None, router=CALM, cloud=DeviceCloudConfig(),
                          log=log)  # fmt: skip
    asyncio.run(engine.aclose())
    with pytest.raises(sqlite3.ProgrammingError):
        len(log)


def test_closing_the_client_closes_its_engine(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    cloud = FakeCloud("a")
    client, backend = make([cloud], log=log)
    assert client.generate("hi", max_tokens=10).source == "mixed"
    client.close()
    assert cloud.closes == 1 and backend.closed
    with pytest.raises(sqlite3.ProgrammingError):
        len(log)
