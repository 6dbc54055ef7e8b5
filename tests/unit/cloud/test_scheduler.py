"""The scheduling rules with a fake engine: no model, no torch."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from edgecloud.cloud._scheduler import Scheduler
from edgecloud.cloud._sequence import Sequence_, TokenStep
from edgecloud.errors import CloudError, OverloadedError
from edgecloud.types import Chunk, Finish, Retraction, SamplingParams

EOS = 0


class FakeEngine:
    """Emits token ``index + 1`` for each row, or EOS once a row reached ``eos_after``.

    Records the batch composition of every step, so tests can see who shared it.
    """

    def __init__(
        self, step_s: float = 0.0, eos_after: int | None = None, reject_at: int | None = None
    ) -> None:
        self.rows: list[Sequence_] = []
        self.batches: list[list[str]] = []
        self.prefills: list[list[str]] = []
        self.step_s = step_s
        self.eos_after = eos_after
        self.reject_at = reject_at
        """A verified prefix is accepted up to this token (None: all of it)."""
        self.fail = False

    def _next(self, seq: Sequence_) -> TokenStep:
        n = len(seq.generated)
        if self.eos_after is not None and n >= self.eos_after:
            return TokenStep(EOS, -0.1, 0.5)
        return TokenStep(n + 1, -0.5, 1.0)

    def prefill(self, seqs: Sequence[Sequence_]) -> list[TokenStep]:
        if self.fail:
            raise RuntimeError("boom: secret internal detail")
        self.prefills.append([s.request_id for s in seqs])
        for s in seqs:
            if s.verify_tokens:
                s.accept_prefix(min(self.reject_at or s.verify_tokens, s.verify_tokens))
        self.rows.extend(seqs)
        return [self._next(s) for s in seqs]

    def decode(self) -> list[TokenStep]:
        time.sleep(self.step_s)
        self.batches.append([s.request_id for s in self.rows])
        return [self._next(s) for s in self.rows]

    def remove(self, indices: Sequence[int]) -> None:
        gone = set(indices)
        self.rows = [s for i, s in enumerate(self.rows) if i not in gone]

    def reset(self) -> None:
        self.rows = []


class Collector:
    def __init__(self) -> None:
        self.events: list[Chunk | Finish | Retraction | BaseException] = []
        self.done = threading.Event()

    def __call__(self, event: Chunk | Finish | Retraction | BaseException) -> None:
        self.events.append(event)
        if isinstance(event, (Finish, BaseException)):
            self.done.set()

    @property
    def finish(self) -> Finish:
        last = self.events[-1]
        assert isinstance(last, Finish), last
        return last

    @property
    def tokens(self) -> list[int]:
        return [e.token_id for e in self.events if isinstance(e, Chunk) and e.token_id >= 0]


def decode_ids(ids: Sequence[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


def make(
    name: str, max_tokens: int = 5, stop: tuple[str, ...] = (), prefix: tuple[int, ...] = ()
) -> tuple[Sequence_, Collector]:
    """A sequence with prompt ``7 8 9``, then ``prefix`` to verify."""
    out = Collector()
    seq = Sequence_(
        request_id=name,
        prompt_ids=[7, 8, 9, *prefix],
        params=SamplingParams(max_tokens=max_tokens, stop=stop),
        adapter_id=None,
        emit=out,
        decode=decode_ids,
        eos_ids=frozenset({EOS}),
        max_new_tokens=max_tokens,
        verify_tokens=len(prefix),
        prefix_text=decode_ids(prefix),
    )
    return seq, out


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def test_runs_to_length_with_signals_and_usage(engine: FakeEngine) -> None:
    sched = Scheduler(engine, max_running=4, max_queued=4, admission_window_s=0)
    seq, out = make("a", max_tokens=3)
    sched.submit(seq)
    assert out.done.wait(5)
    sched.close()
    assert out.tokens == [1, 2, 3]
    assert "".join(e.text for e in out.events if isinstance(e, Chunk)) == "<1><2><3>"
    assert out.finish == Finish("length", 3, 3)
    chunk = out.events[0]
    assert isinstance(chunk, Chunk)
    assert (chunk.source, chunk.index, chunk.logprob, chunk.entropy) == ("cloud", 0, -0.5, 1.0)


def test_eos_finishes_with_stop_and_is_not_emitted() -> None:
    engine = FakeEngine(eos_after=2)
    sched = Scheduler(engine, max_running=4, max_queued=4, admission_window_s=0)
    seq, out = make("a", max_tokens=10)
    sched.submit(seq)
    assert out.done.wait(5)
    sched.close()
    assert out.tokens == [1, 2]
    assert out.finish == Finish("stop", 3, 2)


def test_stop_sequence_cuts_text(engine: FakeEngine) -> None:
    sched = Scheduler(engine, max_running=4, max_queued=4, admission_window_s=0)
    seq, out = make("a", max_tokens=10, stop=("<3>",))
    sched.submit(seq)
    assert out.done.wait(5)
    sched.close()
    assert "".join(e.text for e in out.events if isinstance(e, Chunk)) == "<1><2>"
    assert out.finish.reason == "stop"


def test_requests_join_a_running_batch_between_steps() -> None:
    engine = FakeEngine(step_s=0.01)
    sched = Scheduler(engine, max_running=4, max_queued=4, admission_window_s=0)
    first, out1 = make("first", max_tokens=30)
    sched.submit(first)
    while len(engine.batches) < 3:
        time.sleep(0.005)
    second, out2 = make("second", max_tokens=3)
    sched.submit(second)
    assert out2.done.wait(5) and out1.done.wait(5)
    sched.close()
    # The second request was prefilled alone and then decoded in the same batch
    # as the first, which kept running: continuous batching, not one at a time.
    assert ["second"] in engine.prefills
    assert ["first", "second"] in engine.batches
    assert engine.batches[-1] == ["first"]
    assert out1.tokens == list(range(1, 31))


def test_flood_beyond_limits_fails_at_once() -> None:
    engine = FakeEngine(step_s=0.01)
    sched = Scheduler(engine, max_running=2, max_queued=1, admission_window_s=0)
    outs = []
    for i in range(3):
        seq, out = make(f"r{i}", max_tokens=50)
        sched.submit(seq)
        outs.append(out)
    extra, _ = make("extra")
    with pytest.raises(OverloadedError):
        sched.submit(extra)
    assert sched.load().running + sched.load().queued == 3
    for out in outs:
        assert out.done.wait(10)
    sched.submit(make("after")[0])  # capacity is back
    sched.close()


def test_cancel_frees_the_slot_within_one_step() -> None:
    engine = FakeEngine(step_s=0.02)
    sched = Scheduler(engine, max_running=1, max_queued=0, admission_window_s=0)
    seq, out = make("a", max_tokens=1000)
    sched.submit(seq)
    while len(engine.batches) < 2:
        time.sleep(0.005)
    steps_before = len(engine.batches)
    seq.cancelled = True
    sched.wake()
    assert out.done.wait(2)
    assert out.finish.reason == "cancelled"
    assert len(engine.batches) - steps_before <= 1
    assert engine.rows == []
    sched.submit(make("next", max_tokens=2)[0])  # the slot is free again
    sched.close()


def test_deadline_cancels_a_queued_or_running_sequence() -> None:
    engine = FakeEngine(step_s=0.01)
    sched = Scheduler(engine, max_running=1, max_queued=1, admission_window_s=0)
    seq, out = make("a", max_tokens=10_000)
    seq.deadline = time.monotonic() + 0.1
    sched.submit(seq)
    assert out.done.wait(3)
    sched.close()
    assert out.finish.reason == "cancelled"
    assert 0 < len(out.tokens) < 10_000


def test_engine_failure_reaches_every_client_sanitized() -> None:
    engine = FakeEngine()
    engine.fail = True
    sched = Scheduler(engine, max_running=2, max_queued=2, admission_window_s=0)
    seq, out = make("a")
    sched.submit(seq)
    assert out.done.wait(5)
    err = out.events[-1]
    assert isinstance(err, CloudError)
    assert "secret" not in str(err)
    # The failed batch is gone; the scheduler serves the next request.
    engine.fail = False
    seq2, out2 = make("b", max_tokens=2)
    sched.submit(seq2)
    assert out2.done.wait(5)
    assert out2.finish == Finish("length", 3, 2)
    sched.close()
    with pytest.raises(CloudError):
        sched.submit(make("c")[0])


def test_close_cancels_pending_work() -> None:
    engine = FakeEngine(step_s=0.01)
    sched = Scheduler(engine, max_running=1, max_queued=2, admission_window_s=0)
    pairs = [make(f"r{i}", max_tokens=10_000) for i in range(2)]
    for seq, _ in pairs:
        sched.submit(seq)
    time.sleep(0.05)
    sched.close(timeout=5)
    for _, out in pairs:
        assert out.done.wait(1)
        assert out.finish.reason == "cancelled"


def test_a_burst_arriving_with_short_pauses_shares_one_prefill(engine: FakeEngine) -> None:
    # Gap 0.2 s, window 5 s: three requests 20 ms apart are one burst.
    sched = Scheduler(
        engine, max_running=8, max_queued=0, admission_window_s=5.0, admission_gap_s=0.2
    )
    outs = []
    for name in ("a", "b", "c"):
        seq, out = make(name, max_tokens=2)
        sched.submit(seq)
        outs.append(out)
        time.sleep(0.02)
    assert all(o.done.wait(5) for o in outs)
    sched.close(5)
    assert engine.prefills[0] == ["a", "b", "c"]


def test_a_lone_request_waits_for_the_gap_not_the_window(engine: FakeEngine) -> None:
    sched = Scheduler(
        engine, max_running=8, max_queued=0, admission_window_s=30.0, admission_gap_s=0.05
    )
    seq, out = make("alone", max_tokens=1)
    start = time.monotonic()
    sched.submit(seq)
    assert out.done.wait(10), "a lone request waited for the whole admission window"
    waited = time.monotonic() - start
    sched.close(5)
    assert 0.05 <= waited < 10


def test_the_admission_wait_ends_when_the_batch_is_full(engine: FakeEngine) -> None:
    sched = Scheduler(
        engine, max_running=2, max_queued=0, admission_window_s=30.0, admission_gap_s=30.0
    )
    pair = [make(n, max_tokens=1) for n in ("x", "y")]
    for seq, _ in pair:
        sched.submit(seq)
    assert all(out.done.wait(10) for _, out in pair)
    sched.close(5)
    assert engine.prefills[0] == ["x", "y"]


def test_a_rejected_prefix_is_retracted_before_the_first_token() -> None:
    engine = FakeEngine(reject_at=1)
    sched = Scheduler(engine, max_running=4, max_queued=4, admission_window_s=0)
    verified, out = make("v", max_tokens=2, prefix=(40, 41, 42))
    plain, plain_out = make("p", max_tokens=2)
    sched.submit(verified)
    sched.submit(plain)
    assert out.done.wait(5) and plain_out.done.wait(5)
    sched.close()
    assert out.events[0] == Retraction(kept=4, rejected="<41><42>", kept_tokens=1)
    assert out.tokens == [1, 2] and out.finish == Finish("length", 6, 2)
    assert [type(e) for e in plain_out.events] == [Chunk, Chunk, Finish]  # nothing retracted


def test_an_accepted_prefix_is_continued_without_a_retraction() -> None:
    engine = FakeEngine(eos_after=0)  # the model ends the answer right after the prefix
    sched = Scheduler(engine, max_running=4, max_queued=4, admission_window_s=0)
    seq, out = make("v", max_tokens=1, prefix=(40, 41))
    sched.submit(seq)
    assert out.done.wait(5)
    sched.close()
    assert out.events == [Finish("stop", 5, 0)]


def test_queue_depth_running_sequences_and_batch_sizes_are_published() -> None:
    from tests import scrape

    gate = threading.Event()

    class Gated(FakeEngine):
        def decode(self) -> list[TokenStep]:
            gate.wait(5)
            return super().decode()

    engine = Gated()
    sched = Scheduler(engine, max_running=2, max_queued=4, admission_window_s=0.05,
                      admission_gap_s=0.05)  # fmt: skip
    before = scrape.device()
    outs = []
    for i in range(3):  # two fit the batch, one waits
        seq, out = make(f"r{i}", max_tokens=3)
        sched.submit(seq)
        outs.append(out)
    while not engine.prefills:
        time.sleep(0.005)
    time.sleep(0.05)  # the first decode step is held at the gate
    held = scrape.device()
    gate.set()
    assert all(out.done.wait(5) for out in outs)
    sched.close()
    after = scrape.device()
    assert held["edgecloud_cloud_queue_depth", {}] == 1
    assert held["edgecloud_cloud_running_sequences", {}] == 2
    assert (after["edgecloud_cloud_queue_depth", {}],
            after["edgecloud_cloud_running_sequences", {}]) == (0, 0)  # fmt: skip
    prefills = after.delta(before, "edgecloud_cloud_batch_size_count", phase="prefill")
    decodes = after.delta(before, "edgecloud_cloud_batch_size_count", phase="decode")
    assert prefills == len(engine.prefills) and decodes == len(engine.batches)
    rows = sum(len(b) for b in engine.batches)
    assert after.delta(before, "edgecloud_cloud_batch_size_sum", phase="decode") == rows


def test_call_runs_on_the_scheduler_thread_between_steps() -> None:
    engine = FakeEngine(step_s=0.01)
    sched = Scheduler(engine, max_running=4, max_queued=4, admission_window_s=0)
    seq, out = make("a", max_tokens=20)
    sched.submit(seq)
    seen: list[tuple[str, int]] = []

    def change() -> str:
        # No step is in progress: the batch is whole and the decode count stands still.
        steps = sched.steps
        time.sleep(0.03)
        seen.append((threading.current_thread().name, sched.steps - steps))
        return "loaded"

    assert sched.call(change).result(5) == "loaded"
    assert sched.uses_adapter("x") is False
    assert out.done.wait(5) and out.finish.reason == "length"
    assert seen == [("edgecloud-scheduler", 0)]
    # An idle scheduler runs calls too, and a failing call fails only its future.
    with pytest.raises(ZeroDivisionError):
        sched.call(lambda: 1 / 0).result(5)
    sched.close(timeout=5)
    with pytest.raises(CloudError):
        sched.call(lambda: None)
