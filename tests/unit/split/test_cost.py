from __future__ import annotations

import pytest

from edgecloud.split import Cut, CutProfile, LinkEstimate, LinkEstimator, PowerModel, choose_cut


def _profiles() -> list[CutProfile]:
    # all-cloud sends 100 kB; a middle cut sends 5 kB after 20 ms here; all-device takes 60 ms
    return [
        CutProfile(Cut(0, ("x",), "", 0), 0.0, 0.002, 100_000, 40),
        CutProfile(Cut(1, ("m",), "n", 3), 0.020, 0.001, 5_000, 40),
        CutProfile(Cut(2, ("y",), "n2", 6), 0.060, 0.0, 0, 0, local=True),
    ]


@pytest.mark.parametrize(
    ("mbit", "rtt", "want"),
    [(1, 0.02, 2), (10, 0.02, 1), (1000, 0.002, 0)],
)
def test_the_choice_follows_the_link(mbit: float, rtt: float, want: int) -> None:
    best, costs = choose_cut(_profiles(), LinkEstimate(rtt, mbit * 1e6 / 8))
    assert best.profile.cut.index == want
    assert best.latency_s == min(c.latency_s for c in costs)


def test_latency_formula() -> None:
    _, costs = choose_cut(_profiles(), LinkEstimate(0.02, 1e6))
    assert costs[1].latency_s == pytest.approx(0.020 + 0.02 + 5040 / 1e6 + 0.001)
    assert costs[2].latency_s == pytest.approx(0.060)


def test_energy_objective_prefers_less_device_work() -> None:
    link = LinkEstimate(0.02, 10e6 / 8)
    power = PowerModel(compute_w=5.0, radio_w=0.5, idle_w=0.1)
    best, _ = choose_cut(_profiles(), link, objective="energy", power=power)
    assert best.profile.cut.index == 0


def test_without_the_cloud_only_the_device_runs() -> None:
    best, _ = choose_cut(_profiles(), LinkEstimate(0.001, 1e9), cloud_available=False)
    assert best.profile.local
    with pytest.raises(ValueError, match="no candidate"):
        choose_cut(_profiles()[:2], LinkEstimate(0.001, 1e9), cloud_available=False)


def test_link_estimator_tracks_a_changing_link() -> None:
    est = LinkEstimator(alpha=0.5)
    est.observe_rtt(0.02)
    assert est.estimate.rtt_s == pytest.approx(0.02)  # first sample replaces the guess
    for _ in range(20):
        est.observe_transfer(100_000, 0.02 + 100_000 / 1.25e6)  # 10 Mbit/s
    assert est.estimate.bandwidth_Bps == pytest.approx(1.25e6, rel=1e-6)
    for _ in range(20):
        est.observe_transfer(100_000, 0.02 + 100_000 / 1.25e5)  # drops to 1 Mbit/s
    assert est.estimate.bandwidth_Bps == pytest.approx(1.25e5, rel=1e-3)
    before = est.estimate.bandwidth_Bps
    est.observe_transfer(10, 0.019)  # latency-bound: only says something about the RTT
    assert est.estimate.bandwidth_Bps == before
    assert est.estimate.rtt_s < 0.02
    with pytest.raises(ValueError):
        LinkEstimator(alpha=0)


def test_a_change_of_link_is_followed_within_a_few_transfers_both_ways() -> None:
    est = LinkEstimator(alpha=0.3)
    est.observe_rtt(0.02)
    for _ in range(3):
        est.observe_transfer(1_000_000, 0.02 + 1_000_000 / 12.5e6)  # 100 Mbit/s
    for rate in (1.25e5, 12.5e6):  # down 100x, then back up
        for _ in range(3):
            est.observe_transfer(int(rate), 0.02 + 1.0)  # one second of serialization
        assert rate / 1.5 < est.estimate.bandwidth_Bps < rate * 1.5


def test_one_slow_call_is_a_hiccup_not_a_new_link() -> None:
    est = LinkEstimator(alpha=0.3)
    est.observe_rtt(0.02)
    for _ in range(3):
        est.observe_transfer(100_000, 0.02 + 0.1)  # 1 MB/s
    before = est.estimate.bandwidth_Bps
    est.observe_transfer(500, 0.06)  # a 500-byte call stalled for 40 ms: reads as 12.5 kB/s
    assert est.estimate.bandwidth_Bps == pytest.approx(before)
    # small noise, twice in a row, moves the estimate only by alpha (in log space)
    est.observe_transfer(150_000, 0.02 + 0.1)
    est.observe_transfer(150_000, 0.02 + 0.1)
    assert est.estimate.bandwidth_Bps == pytest.approx(before * 1.5**0.3, rel=1e-6)
