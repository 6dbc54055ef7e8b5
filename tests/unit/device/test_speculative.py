"""Edge-cloud speculative decoding: the device drafts, the cloud verifies, on fakes.

The fake cloud's own greedy answer is ``ANSWER``; the device drafts from its script, after
as many words as the answer so far has. Whatever the drafts, the answer must be the
cloud's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from edgecloud import Client, InvalidRequestError
from edgecloud.config import DeviceCloudConfig
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import HybridEngine
from edgecloud.errors import TransportError
from edgecloud.types import Chunk, Finish, Retraction
from tests.fakes import ScriptedBackend
from tests.fakes_cloud import FakeCloud
from tests.unit.device.test_hybrid import CALM, shown_text

ANSWER = "the heron carries twelve kilograms at most in any weather"
LONG_PROMPT = " ".join(["word"] * 120)  # longer than the fake device's context: the cloud's


def make(
    clouds: Sequence[FakeCloud], script: str, *, log: EscalationLog | None = None, **cloud_kw: Any
) -> tuple[Client, ScriptedBackend]:
    backend = ScriptedBackend(script, follow_prefix=True)
    cfg = DeviceCloudConfig(**{"first_token_timeout_s": 1.0, **cloud_kw})

    def engine() -> HybridEngine:
        pool = EndpointPool([Endpoint(c, CircuitBreaker(2, 60)) for c in clouds])
        return HybridEngine(backend, pool=pool, router=CALM, cloud=cfg, log=log)

    return Client(backend, engine=engine), backend


def cloud_alone(max_tokens: int = 50) -> str:
    client, _ = make([FakeCloud("ref", answer=ANSWER)], "")
    return client.generate("q", route="cloud", max_tokens=max_tokens).text


@pytest.mark.parametrize(
    "script,min_accepted",
    [(ANSWER, 1.0),  # the drafts agree fully
     ("the heron carries ten kilograms at most in all weather", 0.5),  # partly
     ("no draft here says anything the cloud would say ever", 0.0)],  # not at all
)  # fmt: skip
def test_the_answer_is_the_clouds_own_whatever_the_drafts(script: str, min_accepted: float) -> None:
    cloud = FakeCloud("a", answer=ANSWER)
    client, _ = make([cloud], script)
    stream = client.stream("q", route="cloud", speculative=4, max_tokens=50)
    chunks = list(stream)
    r = stream.result
    assert r.text == shown_text(chunks) == cloud_alone() == ANSWER
    assert r.source == "cloud" and {c.source for c in chunks} == {"cloud"}
    assert r.finish_reason == "stop" and r.usage.completion_tokens == len(ANSWER.split())
    route = r.route
    assert route is not None and route.escalated and route.endpoint == "a"
    assert route.cloud_passes == len(cloud.calls)
    assert all(call["verify_prefix"] and call["params"].max_tokens == 1 for call in cloud.calls)
    assert route.draft_accepted >= min_accepted * route.draft_tokens
    assert route.signals["speculative"] == 4
    if min_accepted == 1.0:  # each pass yields a whole draft plus one token
        assert route.draft_accepted == route.draft_tokens > 0
        assert route.cloud_passes / r.usage.completion_tokens < 1
        assert route.cloud_passes == 2  # 4 drafted + 1 added, twice
    if min_accepted == 0.0:
        assert route.draft_accepted == 0 and route.cloud_passes == len(ANSWER.split())


def test_max_tokens_cuts_the_answer_where_the_cloud_alone_would() -> None:
    client, _ = make([FakeCloud("a", answer=ANSWER)], ANSWER)
    r = client.generate("q", route="cloud", speculative=3, max_tokens=6)
    assert r.text == cloud_alone(6) == "the heron carries twelve kilograms at"
    assert r.finish_reason == "length" and r.usage.completion_tokens == 6


def test_a_stop_sequence_spanning_two_rounds_ends_the_answer() -> None:
    client, _ = make([FakeCloud("a", answer=ANSWER)], ANSWER)
    # round one: "the heron" drafted + " carries"; " twelve kilograms" drafted in round two
    stream = client.stream("q", route="cloud", speculative=2, stop=["carries twelve"])
    chunks = list(stream)
    assert stream.result.text == shown_text(chunks) == "the heron "
    assert stream.result.finish_reason == "stop"
    assert "carries" not in "".join(c.text for c in chunks)


def test_the_configured_draft_length_applies_to_greedy_cloud_answers(tmp_path: Any) -> None:
    log = EscalationLog(tmp_path / "log.db")
    cloud = FakeCloud("a", answer=ANSWER)
    client, _ = make([cloud], ANSWER, log=log, speculative_tokens=5)
    r = client.generate("q", route="cloud", max_tokens=50)
    assert r.text == ANSWER and r.route is not None and r.route.cloud_passes == 2
    [rec] = log.all()
    assert rec.cloud_answer == ANSWER and rec.local_partial == ""
    # 5 drafted + 1 added, then the last 4 words drafted and the cloud's end
    assert rec.extra["speculative"] == {"draft": 5, "drafted": 9, "accepted": 9, "passes": 2}
    sampled = client.generate("q", route="cloud", max_tokens=50, temperature=0.7)
    assert sampled.route is not None and sampled.route.cloud_passes == 0  # streamed as usual
    assert not cloud.calls[-1]["verify_prefix"]


def test_speculative_decoding_needs_greedy_sampling() -> None:
    client, _ = make([FakeCloud("a", answer=ANSWER)], ANSWER)
    with pytest.raises(InvalidRequestError, match="temperature 0"):
        client.generate("q", route="cloud", speculative=4, temperature=0.5)


def test_an_answer_the_device_gives_does_not_speculate() -> None:
    cloud = FakeCloud("a", answer=ANSWER)
    client, _ = make([cloud], "one two three")
    r = client.generate("q", speculative=4)  # CALM: the device answers, the cloud is not asked
    assert r.text == "one two three" and r.source == "local" and cloud.calls == []


def test_a_dying_endpoint_hands_the_rounds_to_the_next_one() -> None:
    dying, spare = FakeCloud("a", answer=ANSWER, fail_from_call=2), FakeCloud("b", answer=ANSWER)
    client, _ = make([dying, spare], ANSWER)
    r = client.generate("q", route="cloud", speculative=2, max_tokens=50)
    assert r.text == ANSWER and r.route is not None and r.route.endpoint == "b"
    # it failed on its second and third calls (each round then went to b), then its
    # breaker opened and it was asked no more
    assert r.route.fallback is None and len(dying.calls) == 3


def test_a_cloud_lost_mid_answer_is_finished_on_the_device() -> None:
    cloud = FakeCloud("a", answer=ANSWER, fail_from_call=2)
    # ContextLengthPolicy sends this prompt to the cloud (not demanded): the device may finish
    client, backend = make([cloud], "the heron carries ten kilos")
    stream = client.stream(LONG_PROMPT, speculative=2, max_tokens=6)
    chunks = list(stream)
    r = stream.result
    assert r.route is not None and r.route.policy == "context"
    assert r.route.fallback is not None and "went away" in r.route.fallback
    assert r.text == shown_text(chunks) == "the heron carries ten kilos"
    assert backend.prefixes[-1] == "the heron carries"  # after what the cloud verified
    assert [c.source for c in chunks] == ["cloud"] * 3 + ["local"] * 2


def test_a_demanded_speculative_answer_raises_when_the_cloud_is_lost() -> None:
    client, _ = make([FakeCloud("a", answer=ANSWER, fail_from_call=2)], ANSWER)
    with pytest.raises(TransportError, match="demands the cloud"):
        client.generate("q", route="cloud", speculative=2)


class SplitsElsewhere(FakeCloud):
    """A cloud whose tokens of a text split elsewhere than the device's: verifying a prefix,
    it always takes back its last two words and writes the first of them again, so a
    one-word draft never moves the answer on."""

    async def stream(
        self, prompt: Any, params: Any = None, *, timeout_s: float | None = None,
        assistant_prefix: str = "", verify_prefix: bool = False,
        prefix_logprobs: Sequence[float] = (),
    ) -> AsyncIterator[Chunk | Finish | Retraction]:  # fmt: skip
        if not (verify_prefix and assistant_prefix):
            async for ev in super().stream(
                prompt, params, timeout_s=timeout_s, assistant_prefix=assistant_prefix
            ):
                yield ev
            return
        self.calls.append({"params": params, "verify_prefix": True})
        kept_words = assistant_prefix.split(" ")[:-2]
        kept = len(" ".join(kept_words))
        yield Retraction(kept, assistant_prefix[kept:], len(kept_words))
        own = ANSWER.split(" ")[len(kept_words)]
        yield Chunk((" " if kept_words else "") + own, 7, -0.1, 0.2, "cloud", 0)
        yield Finish("length", 7, 1)


def test_drafting_that_goes_round_in_circles_gives_way_to_the_clouds_stream() -> None:
    cloud = SplitsElsewhere("a", answer=ANSWER)
    client, _ = make([cloud], ANSWER)
    stream = client.stream("q", route="cloud", speculative=1, max_tokens=50)
    chunks = list(stream)
    r = stream.result
    assert r.text == shown_text(chunks) == ANSWER and r.finish_reason == "stop"
    # round 1 wrote "the"; round 2 took it back and wrote it again: no progress, so the
    # cloud streamed the rest after "the"
    assert [c["verify_prefix"] for c in cloud.calls] == [True, True, False]
    assert cloud.calls[-1]["params"].max_tokens == 49
    assert r.route is not None and r.route.retracted_chars == len("the")  # taken, given back


def test_a_cloud_failing_after_its_verdict_loses_none_of_what_it_verified() -> None:
    flaky = FakeCloud("a", answer=ANSWER, fail_after_retraction=True)
    spare = FakeCloud("b", answer=ANSWER)
    client, _ = make([flaky, spare], "the heron carries ten kilograms at most in all weather")
    stream = client.stream("q", route="cloud", speculative=4, max_tokens=50)
    chunks = list(stream)
    r = stream.result
    assert r.text == shown_text(chunks) == ANSWER and r.route is not None
    # a kept "the heron carries" of each draft, then failed, twice (its breaker opened);
    # with no progress in the second round, b streamed the rest after the kept text
    assert [c["assistant_prefix"] for c in flaky.calls] == [
        "the heron carries ten", "the heron carries ten kilograms at most"
    ]  # fmt: skip
    assert [(c["assistant_prefix"], c["verify_prefix"]) for c in spare.calls] == [
        ("the heron carries", False)
    ]
    assert r.route.endpoint == "b" and r.route.fallback is None


class _SelfDoubtingCloud(FakeCloud):
    """Verifying, it rejects its own token of the round before (as reduced precision can
    when a prefill breaks a near-tie differently from the decode step that chose it) and
    adds another: every verified round takes back as much as it adds."""

    def __init__(self) -> None:
        super().__init__("doubt", words="flip flop flip flop flip flop")
        self.mine = 0

    async def stream(
        self,
        prompt: Any,
        params: Any = None,
        *,
        timeout_s: float | None = None,
        assistant_prefix: str = "",
        verify_prefix: bool = False,
        prefix_logprobs: Sequence[float] = (),
    ) -> AsyncIterator[Chunk | Finish | Retraction]:
        prefix = assistant_prefix
        if not verify_prefix:
            events = super().stream(prompt, params, timeout_s=timeout_s, assistant_prefix=prefix)
            async for ev in events:
                yield ev
            return
        self.calls.append({"assistant_prefix": prefix, "verify_prefix": True})
        words = prefix.split(" ")
        kept_words = max(self.mine - 1, 0)
        kept = len(" ".join(words[:kept_words])) if kept_words else 0
        yield Retraction(kept, prefix[kept:], kept_words)
        word = ("" if kept == 0 else " ") + ("flip" if len(self.calls) % 2 else "flop")
        self.mine = kept_words + 1
        yield Chunk(word, 7, -0.1, 0.2, "cloud", 0)
        yield Finish("length", 7, 1)


@pytest.mark.timeout(20)
def test_rounds_that_make_no_progress_end_with_the_cloud_answering_alone() -> None:
    cloud = _SelfDoubtingCloud()
    client, _ = make([cloud], "alpha beta gamma delta epsilon zeta eta theta")
    r = client.generate("q", route="cloud", speculative=3, max_tokens=12)
    assert r.route is not None
    verified = [c for c in cloud.calls if c.get("verify_prefix")]
    assert len(verified) == 2  # the second round took back what it added: no more drafting
    assert len(cloud.calls) == 3 and not cloud.calls[-1]["verify_prefix"]
    assert r.text.split()[0] in ("flip", "flop") and len(r.text.split()) > 2
