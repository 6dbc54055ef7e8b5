"""The hybrid engine's routing, hand-off and failure handling, on project fakes."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from edgecloud import Client, InvalidRequestError
from edgecloud.config import DeviceCloudConfig, RouterConfig
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import HybridEngine
from edgecloud.errors import ConfigError, TransportError
from edgecloud.types import Chunk, Finish, Retraction
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
    follow_prefix: bool = False,
    **cloud_kw: Any,
) -> tuple[Client, ScriptedBackend]:
    # A token takes time, as on a device.
    backend = ScriptedBackend(words, delay=0.02, follow_prefix=follow_prefix)
    cfg = DeviceCloudConfig(**{"first_token_timeout_s": 1.0, **cloud_kw})

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


def test_a_blind_handoff_within_the_holdback_drops_the_unshown_tokens(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    cloud = FakeCloud("a")
    router = TRIP.model_copy(update={"holdback_tokens": 3})  # the window trips at token 3
    client, _ = make([cloud], router=router, log=log, verify_handoff=False)
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
    # device.router.privacy_detectors: secrets and more personal data, by default
    for text in ("my key is AKIAIOSFODNN7EXAMPLE", "ssh to 10.0.0.5", "my password is hunter2"):
        with pytest.raises(InvalidRequestError, match="must stay on the device"):
            client.generate(text, route="cloud")
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


def test_privacy_strict_without_the_library_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # not installed
    router = CALM.model_copy(update={"privacy_strict": True})
    with pytest.raises(ConfigError, match="presidio-analyzer"):
        HybridEngine(ScriptedBackend(), pool=None, router=router, cloud=DeviceCloudConfig())
    # not strict: the device starts, with the fallback patterns for that detector
    engine = HybridEngine(ScriptedBackend(), pool=None, router=CALM, cloud=DeviceCloudConfig())
    decision, _ = asyncio.run(engine.decide("ssh to 10.0.0.5", None))
    assert decision.private and "ip_address" in decision.reason


def test_budget_spent_survives_a_restart(tmp_path: Path) -> None:
    cloud = FakeCloud("a")
    router = TRIP.model_copy(update={"budget_tokens_per_hour": 5})
    client, _ = make([cloud], router=router, log=EscalationLog(tmp_path / "log.db"))
    assert client.generate("hi", max_tokens=10).source == "mixed"  # 10 tokens spent
    client.close()
    # a new engine on the same log: the device restarted within the hour
    again, _ = make([cloud], router=router, log=EscalationLog(tmp_path / "log.db"))
    r = again.generate("hi", max_tokens=10)
    assert r.source == "local" and r.route is not None and r.route.policy == "budget"
    assert "10 of 5 tokens this hour" in r.route.reason and len(cloud.calls) == 1
    again.close()
    # spending older than the window no longer counts, and older than a day is dropped
    log = EscalationLog(tmp_path / "log.db")
    log.add_usage(time.time() - 7200, 1)
    hour_ago = HybridEngine(ScriptedBackend("x"), pool=None, router=router, cloud=DeviceCloudConfig(),
                            log=log)  # fmt: skip
    now = time.time()
    assert (hour_ago.usage.since(now, 3600), hour_ago.usage.since(now, 86_400)) == (10, 11)
    log.add_usage(now + 86_400, 2)
    assert [n for _, n in log.usage(0)] == [2]
    log.close()


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


def shown_text(chunks: Sequence[Chunk]) -> str:
    """The text an app shows after applying each chunk as documented (retracted, then text)."""
    text = ""
    for c in chunks:
        text = text[: len(text) - c.retracted] + c.text
    return text


# The device writes "one two three" before the window trips (see TRIP).


def test_a_verified_handoff_keeps_what_the_cloud_agrees_with_and_takes_back_the_rest(
    tmp_path: Path,
) -> None:
    log = EscalationLog(tmp_path / "log.db")
    cloud = FakeCloud("a", answer="one two six seven")
    client, _ = make([cloud], log=log)
    stream = client.stream("hi", max_tokens=10)
    chunks = list(stream)
    r = stream.result
    assert [(c.text, c.source, c.retracted) for c in chunks] == [
        ("one", "local", 0), (" two", "local", 0), (" three", "local", 0),
        (" six", "cloud", len(" three")), (" seven", "cloud", 0),
    ]  # fmt: skip
    assert [c.index for c in chunks] == [0, 1, 2, 2, 3]  # positions in the corrected answer
    assert r.text == shown_text(chunks) == "one two six seven" and r.source == "mixed"
    assert r.usage.completion_tokens == 4 and r.confidence.tokens == 4
    assert r.route is not None and r.route.escalated
    assert (r.route.local_tokens_before_handoff, r.route.rejected_local_tokens) == (2, 1)
    assert r.route.retracted_chars == len(" three")
    [call] = cloud.calls
    assert call["assistant_prefix"] == "one two three" and call["verify_prefix"]
    assert call["prefix_logprobs"] == [-0.5, -1.0, -1.5]  # the device's, one per token
    [rec] = log.all()
    assert rec.local_partial == "one two three" and rec.cloud_answer == " six seven"
    assert rec.extra["kept_prefix_chars"] == len("one two")
    assert rec.extra["rejected_prefix"] == " three"


def test_a_prefix_the_cloud_accepts_whole_is_continued_without_retraction(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    cloud = FakeCloud("a", answer="one two three four")
    client, _ = make([cloud], log=log)
    stream = client.stream("hi", max_tokens=10)
    chunks = list(stream)
    assert [c.source for c in chunks] == ["local"] * 3 + ["cloud"]
    assert all(c.retracted == 0 for c in chunks)
    r = stream.result
    assert r.text == "one two three four" and r.route is not None
    assert (r.route.rejected_local_tokens, r.route.retracted_chars) == (0, 0)
    assert log.all()[0].extra["rejected_prefix"] == ""


def test_a_prefix_the_cloud_rejects_whole_is_all_taken_back() -> None:
    cloud = FakeCloud("a", answer="uno dos")
    client, _ = make([cloud])
    stream = client.stream("hi", max_tokens=10)
    chunks = list(stream)
    r = stream.result
    assert chunks[3].text == "uno" and chunks[3].retracted == len("one two three")
    assert r.text == shown_text(chunks) == "uno dos"
    assert r.source == "cloud" and r.confidence.tokens == 2  # no local token is left
    assert r.route is not None and r.route.local_tokens_before_handoff == 0
    assert r.route.rejected_local_tokens == 3


def test_held_back_text_is_shown_as_far_as_the_cloud_keeps_it() -> None:
    router = TRIP.model_copy(update={"holdback_tokens": 3})  # all three are held at the trip
    cloud = FakeCloud("a", answer="one two six")
    client, _ = make([cloud], router=router)
    chunks = list(client.stream("hi", max_tokens=10))
    assert [(c.text, c.source) for c in chunks] == [
        ("one", "local"),
        (" two", "local"),
        (" six", "cloud"),
    ]  # " three" was rejected before anyone saw it
    assert all(c.retracted == 0 for c in chunks)
    assert cloud.calls[0]["assistant_prefix"] == "one two three"  # held text is verified too


@pytest.mark.parametrize("how", ["setting", "option"])
def test_nothing_unverified_is_shown_when_the_app_cannot_take_text_back(how: str) -> None:
    cloud = FakeCloud("a", answer="one two six seven", delay=0.1)
    router = TRIP.model_copy(update={"show_unverified": how == "option"})
    client, _ = make([cloud], router=router)
    options: dict[str, Any] = {"show_unverified": False} if how == "option" else {}
    stream = client.stream("hi", max_tokens=10, **options)
    first = next(stream)
    assert len(cloud.calls) == 1  # the first chunk came only after the cloud's verdict
    chunks = [first, *stream]
    assert [(c.text, c.source) for c in chunks] == [
        ("one", "local"), (" two", "local"), (" six", "cloud"), (" seven", "cloud")
    ]  # fmt: skip
    assert all(c.retracted == 0 for c in chunks)
    assert stream.result.text == "one two six seven"


def test_without_a_handoff_unverified_mode_delivers_the_whole_local_answer() -> None:
    cloud = FakeCloud("a")
    client, _ = make([cloud], router=CALM.model_copy(update={"show_unverified": False}))
    stream = client.stream("hi", max_tokens=4)
    chunks = list(stream)
    assert [c.text for c in chunks] == ["one", " two", " three", " four"]
    assert stream.result.text == "one two three four" and cloud.calls == []


def test_a_blind_handoff_neither_asks_for_nor_gets_a_verdict() -> None:
    cloud = FakeCloud("a", answer="one two six seven")
    client, _ = make([cloud], verify_handoff=False)
    r = client.generate("hi", max_tokens=10)
    [call] = cloud.calls
    assert not call["verify_prefix"] and call["assistant_prefix"] == "one two three"
    assert r.text == "one two three seven"  # continued as it was, after three words
    assert r.route is not None and r.route.rejected_local_tokens == 0


def test_a_client_without_prefix_verification_is_asked_to_continue() -> None:
    class OldCloud(FakeCloud):
        """An endpoint client written before ``verify_prefix`` existed."""

        async def stream(  # type: ignore[override]
            self, prompt: Any, params: Any = None, *, timeout_s: float | None = None,
            assistant_prefix: str = "",
        ) -> AsyncIterator[Chunk | Finish | Retraction]:  # fmt: skip
            async for ev in super().stream(
                prompt, params, timeout_s=timeout_s, assistant_prefix=assistant_prefix
            ):
                yield ev

    cloud = OldCloud("old", answer="one two six seven")
    assert not Endpoint(cloud, CircuitBreaker()).verifies  # type: ignore[arg-type]
    assert Endpoint(FakeCloud("new"), CircuitBreaker()).verifies
    client, _ = make([cloud])
    assert client.generate("hi", max_tokens=10).text == "one two three seven"
    assert not cloud.calls[0]["verify_prefix"]


def test_a_private_request_that_would_be_handed_off_sends_and_uploads_nothing(
    tmp_path: Path,
) -> None:
    log = EscalationLog(tmp_path / "log.db")
    cloud = FakeCloud("a", answer="one two six seven")
    client, _ = make([cloud], log=log)  # TRIP: any public answer is handed off at token 3
    r = client.generate("call me at +44 20 7946 0958 about it", max_tokens=8)
    assert r.route is not None and r.route.private and not r.route.escalated
    assert r.text == "one two three four five six seven eight" and r.source == "local"
    assert client.upload_pending() == 0
    assert cloud.calls == [] and cloud.uploaded == {} and len(log) == 0


def test_a_cloud_dying_before_its_verdict_leaves_the_device_text_standing() -> None:
    router = TRIP.model_copy(update={"holdback_tokens": 3})  # nothing shown at the trip
    cloud = FakeCloud("a", answer="one two six", fail_after=0)
    client, backend = make([cloud], router=router, follow_prefix=True)
    stream = client.stream("hi", max_tokens=6)
    chunks = list(stream)
    r = stream.result
    assert r.route is not None and r.route.fallback is not None and "went away" in r.route.fallback
    assert [c.source for c in chunks] == ["local"] * 6 and all(c.retracted == 0 for c in chunks)
    assert r.text == shown_text(chunks) == "one two three four five six"
    assert backend.prefixes[-1] == "one two three"  # resumed after all of its own text
    assert r.route.rejected_local_tokens == 0 and r.usage.completion_tokens == 6


def test_a_cloud_dying_after_its_verdict_is_finished_on_the_device_after_the_kept_text() -> None:
    dying = FakeCloud("a", answer="one two six", fail_after_retraction=True)
    spare = FakeCloud("b", answer="one two six")
    client, backend = make([dying, spare], follow_prefix=True)
    stream = client.stream("hi", max_tokens=5)
    chunks = list(stream)
    r = stream.result
    assert r.route is not None and r.route.fallback is not None
    assert spare.calls == []  # the answer had moved on: no other endpoint starts it over
    assert backend.prefixes[-1] == "one two"  # the cloud's verdict stands
    assert chunks[3].source == "local" and chunks[3].retracted == len(" three")
    assert r.text == shown_text(chunks) == "one two three four five"
    assert r.route.retracted_chars == len(" three") and r.route.rejected_local_tokens == 1


def test_a_cloud_dying_after_its_verdict_on_held_text_shows_only_the_kept_part() -> None:
    router = TRIP.model_copy(update={"show_unverified": False})
    cloud = FakeCloud("a", answer="one two six", fail_after_retraction=True)
    client, _ = make([cloud], router=router, follow_prefix=True)
    stream = client.stream("hi", max_tokens=4)
    chunks = list(stream)
    assert all(c.retracted == 0 for c in chunks)  # the app was never shown " three"
    assert [c.text for c in chunks] == ["one", " two", " three", " four"]
    assert stream.result.text == "one two three four"


def test_a_cloud_dying_mid_answer_after_a_retraction_keeps_the_text_consistent() -> None:
    cloud = FakeCloud("a", answer="one two six seven eight", fail_after=1)
    client, _ = make([cloud], follow_prefix=True)
    stream = client.stream("hi", max_tokens=6)
    chunks = list(stream)
    r = stream.result
    assert [c.source for c in chunks] == ["local"] * 3 + ["cloud"] + ["local"] * 3
    assert chunks[3].text == " six" and chunks[3].retracted == len(" three")
    assert r.text == shown_text(chunks) == "one two six four five six"
    assert r.route is not None and r.route.fallback is not None
    assert r.usage.completion_tokens == 6


def test_a_retraction_with_nothing_after_it_comes_on_an_empty_chunk() -> None:
    cloud = FakeCloud("a", answer="one two")  # it would have stopped after "two"
    client, _ = make([cloud])
    stream = client.stream("hi", max_tokens=10)
    chunks = list(stream)
    r = stream.result
    last = chunks[-1]
    assert (last.text, last.token_id, last.retracted) == ("", -1, len(" three"))
    assert r.text == shown_text(chunks) == "one two" and r.finish_reason == "stop"
    assert r.usage.completion_tokens == r.confidence.tokens == 2 and r.source == "local"


def test_an_adapter_versions_calibration_governs_the_requests_it_answers(tmp_path: Path) -> None:
    from edgecloud.adapters._manifest import AdapterCalibration, AdapterRouting, AdapterScope

    cloud = FakeCloud("a")
    backend = ScriptedBackend("one two three four five six seven eight", delay=0.0)
    log = EscalationLog(tmp_path / "log.sqlite3")
    made: list[HybridEngine] = []

    def engine() -> HybridEngine:
        pool = EndpointPool([Endpoint(cloud, CircuitBreaker(failures=2, cooldown_s=60))])
        made.append(HybridEngine(backend, pool=pool, router=CALM, cloud=DeviceCloudConfig(),
                                 log=log))  # fmt: skip
        return made[-1]

    client = Client(backend, engine=engine)
    assert not client.generate("hi", max_tokens=6).route.escalated  # type: ignore[union-attr]
    # The version's thresholds (those of TRIP) apply while it runs...
    calibration = AdapterCalibration(window=2, min_mean_logprob=-1.2, min_tokens=2,
                                     target_wrong_rate=0.03, examples=20)  # fmt: skip
    made[0].set_adapter_routing(AdapterRouting(3, None, calibration))
    r = client.generate("hi", max_tokens=6)
    assert r.route is not None and r.route.escalated and r.route.local_tokens_before_handoff == 3
    assert log.pending(10)[-1].extra["adapter_version"] == 3
    # ...not to requests its scope leaves to the base model...
    never = AdapterScope(encoder="e", weights=(0.0,), bias=-10.0)

    class OneDim:
        identity, dim = "e", 1

        def encode(self, texts: Sequence[str]) -> Any:
            import numpy as np

            return np.zeros((len(texts), 1), dtype=np.float32)

    made[0].set_adapter_routing(AdapterRouting(3, never, calibration), encoder=OneDim())  # type: ignore[arg-type]
    assert not client.generate("hi", max_tokens=6).route.escalated  # type: ignore[union-attr]
    # ...and the device's own come back with the base model (a rollback).
    made[0].set_adapter_routing(AdapterRouting())
    r = client.generate("hi", max_tokens=6)
    assert r.route is not None and not r.route.escalated and made[0].adapter_version is None
    client.close()


def test_an_answer_the_adapter_did_not_learn_for_the_nearest_question_goes_to_the_cloud() -> None:
    import numpy as np

    from edgecloud.adapters._manifest import AdapterCalibration, AdapterRouting, AnswerMemory

    class OneHot:
        """Prompts about the Kestrel, the Heron and anything else point three ways."""

        identity, dim = "e", 3

        def encode(self, texts: Sequence[str]) -> Any:
            return np.array([[1.0, 0.0, 0.0] if "Kestrel" in t else [0.0, 1.0, 0.0]
                             if "Heron" in t else [0.0, 0.0, 1.0] for t in texts],
                            dtype=np.float32)  # fmt: skip

    learned = AnswerMemory.build("e", "", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                                 ["one two three", "a Heron answer"], 0.05, 0.5)  # fmt: skip
    calibration = AdapterCalibration(window=1, min_mean_logprob=-1e9, target_wrong_rate=0.03,
                                     examples=20, memory=learned)  # fmt: skip
    cloud = FakeCloud("a")
    backend = ScriptedBackend("one two three", delay=0.0)
    made: list[HybridEngine] = []

    def engine() -> HybridEngine:
        pool = EndpointPool([Endpoint(cloud, CircuitBreaker(failures=2, cooldown_s=60))])
        made.append(HybridEngine(backend, pool=pool, router=CALM, cloud=DeviceCloudConfig()))
        made[-1].set_adapter_routing(AdapterRouting(2, None, calibration), encoder=OneHot())  # type: ignore[arg-type]
        return made[-1]

    client = Client(backend, engine=engine)
    # What it learned for the Kestrel: the local answer stands.
    r = client.generate("Q: Kestrel payload?\nA:", max_tokens=8)
    assert r.route is not None and not r.route.escalated and r.text == "one two three"
    # The same answer to the Heron question is another question's answer: the cloud's.
    r = client.generate("Q: Heron payload?\nA:", max_tokens=8)
    assert r.route is not None and r.route.escalated and r.route.policy == "answer-memory"
    assert r.text.endswith("cloud says hello") and len(cloud.calls) == 1
    # Nothing like what it learned: the base model answers, at the device's thresholds.
    r = client.generate("Q: What is the capital of Peru?\nA:", max_tokens=8)
    assert r.route is not None and not r.route.escalated and len(cloud.calls) == 1
    assert r.route.signals["adapter_in_scope"] is False
    assert r.route.signals["adapter_memory_nearest"] == 0.0
    # A memory kept for its floor only does not check answers.
    floor_only = calibration.model_copy(
        update={"memory": learned.model_copy(update={"check_answers": False})}
    )
    made[0].set_adapter_routing(AdapterRouting(2, None, floor_only), encoder=OneHot())  # type: ignore[arg-type]
    r = client.generate("Q: Heron payload?\nA:", max_tokens=8)
    assert r.route is not None and not r.route.escalated and len(cloud.calls) == 1
    r = client.generate("Q: What is the capital of Peru?\nA:", max_tokens=8)
    assert r.route is not None and r.route.signals["adapter_in_scope"] is False
    made[0].set_adapter_routing(AdapterRouting(2, None, calibration), encoder=OneHot())  # type: ignore[arg-type]
    # A private request never leaves the device, memory or not.
    r = client.generate("Q: Heron payload? my email is a@b.example\nA:", max_tokens=8)
    assert r.route is not None and not r.route.escalated
    client.close()
