import math
import random

import pytest

from edgecloud.router import (
    ConfidenceMonitor,
    WindowThresholds,
    auroc,
    calibrate_window,
    threshold_for_rate,
    window_extremes,
)


def test_monitor_fires_once_when_window_mean_drops() -> None:
    m = ConfidenceMonitor(WindowThresholds(window=3, min_mean_logprob=-1.0, min_tokens=2))
    assert m.update(-0.1, 0.5) is None
    assert m.update(-0.2, 0.5) is None
    assert m.update(-0.3, 0.5) is None
    assert m.update(-2.0, 0.5) is None  # window mean (-0.2-0.3-2)/3 = -0.83
    d = m.update(-2.0, 0.5)  # (-0.3-2-2)/3 = -1.43
    assert d is not None and d.route == "cloud"
    assert d.signals["local_tokens"] == 5
    assert d.signals["window_mean_logprob"] == pytest.approx(-4.3 / 3)
    assert m.update(-9.0, 9.0) is None  # fires once


def test_monitor_entropy_and_limits() -> None:
    m = ConfidenceMonitor(WindowThresholds(window=2, max_mean_entropy=2.0, max_local_tokens=3))
    assert m.update(-0.1, 1.0) is None
    assert m.update(-0.1, 1.5) is None
    d = m.update(-0.1, 3.0)
    assert d is not None and "entropy" in d.reason
    late = ConfidenceMonitor(WindowThresholds(window=1, max_mean_entropy=2.0, max_local_tokens=1))
    late.update(0.0, 0.0)
    assert late.update(0.0, 9.0) is None  # past max_local_tokens: keep going locally


def test_window_extremes_match_the_monitor() -> None:
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(1, 30)
        lps = [-rng.random() * 3 for _ in range(n)]
        ents = [rng.random() * 4 for _ in range(n)]
        lo, _ = window_extremes(lps, ents, window=4, min_tokens=2)
        thr = WindowThresholds(window=4, min_mean_logprob=lo + 1e-9, min_tokens=2)
        m = ConfidenceMonitor(thr)
        fired = any(m.update(a, b) is not None for a, b in zip(lps, ents, strict=True))
        assert fired == math.isfinite(lo)
        m2 = ConfidenceMonitor(WindowThresholds(window=4, min_mean_logprob=lo - 1e-9, min_tokens=2))
        assert not any(m2.update(a, b) is not None for a, b in zip(lps, ents, strict=True))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.5, 1.0])
def test_threshold_for_rate_hits_the_target(rate: float) -> None:
    rng = random.Random(0)
    scores = [rng.gauss(0, 1) for _ in range(200)]
    lo = threshold_for_rate(scores, rate, higher_escalates=False)
    hi = threshold_for_rate(scores, rate, higher_escalates=True)
    assert sum(s < lo for s in scores) / 200 == pytest.approx(rate)
    assert sum(s > hi for s in scores) / 200 == pytest.approx(rate)


def test_calibrate_window_reaches_the_target_rate() -> None:
    rng = random.Random(1)
    answers = []
    for _ in range(100):
        n = rng.randint(6, 20)
        answers.append(
            ([-rng.random() * 2 for _ in range(n)], [rng.random() * 3 for _ in range(n)])
        )
    for signal in ("logprob", "entropy"):
        cal = calibrate_window(answers, 0.2, signal=signal, window=4, min_tokens=2)
        assert cal.achieved_rate == pytest.approx(0.2, abs=0.011)
        fired = 0
        for lps, ents in answers:
            m = ConfidenceMonitor(cal.thresholds)
            fired += any(m.update(a, b) is not None for a, b in zip(lps, ents, strict=True))
        assert fired / len(answers) == pytest.approx(cal.achieved_rate)


def test_auroc() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert math.isnan(auroc([1, 2], [True, True]))
    rng = random.Random(2)
    scores = [rng.random() for _ in range(300)]
    labels = [rng.random() < 0.3 for _ in range(300)]
    brute = sum((p > n) + 0.5 * (p == n) for p, lp in zip(scores, labels, strict=True) if lp
                for n, ln in zip(scores, labels, strict=True) if not ln)  # fmt: skip
    assert auroc(scores, labels) == pytest.approx(brute / (sum(labels) * (300 - sum(labels))))
