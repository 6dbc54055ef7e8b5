import numpy as np
import pytest

from edgecloud.backends._signals import StepSignals


def _reference(logits: np.ndarray, token: int) -> tuple[float, float]:
    x = logits.astype(np.float64)
    lse = np.logaddexp.reduce(x)
    p = np.exp(x - lse)
    finite = p > 0
    return float(x[token] - lse), float(-(p[finite] * (x[finite] - lse)).sum())


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_matches_float64_reference(scale: float) -> None:
    rng = np.random.default_rng(0)
    n = 262_144
    signals = StepSignals(n)
    for _ in range(5):
        logits = (rng.standard_normal(n) * scale).astype(np.float32)
        token = int(rng.integers(n))
        lp, ent = signals(logits, token, float(logits.max()))
        ref_lp, ref_ent = _reference(logits, token)
        assert lp == pytest.approx(ref_lp, abs=2e-3)
        assert ent == pytest.approx(ref_ent, rel=1e-3, abs=2e-3)


def test_uniform_and_peaked_extremes() -> None:
    n = 1000
    signals = StepSignals(n)
    uniform = np.zeros(n, dtype=np.float32)
    lp, ent = signals(uniform, 3, 0.0)
    assert lp == pytest.approx(-np.log(n), abs=1e-5)
    assert ent == pytest.approx(np.log(n), abs=1e-4)
    peaked = np.full(n, -100.0, dtype=np.float32)
    peaked[7] = 100.0
    lp, ent = signals(peaked, 7, 100.0)
    assert lp == pytest.approx(0.0, abs=1e-6)
    assert ent == pytest.approx(0.0, abs=1e-6)


def test_masked_logits_do_not_produce_nan() -> None:
    logits = np.array([1.0, 2.0, -np.inf, 0.5], dtype=np.float32)
    lp, ent = StepSignals(4)(logits, 1, 2.0)
    ref_lp, ref_ent = _reference(logits, 1)
    assert lp == pytest.approx(ref_lp, abs=1e-5)
    assert ent == pytest.approx(ref_ent, abs=1e-5)


def test_top_k_are_the_k_most_likely_tokens_with_their_logprobs() -> None:
    rng = np.random.default_rng(1)
    n = 50_000
    signals = StepSignals(n)
    logits = (rng.standard_normal(n) * 3).astype(np.float32)
    logits[123] = logits[456] = 40.0  # a tie at the top: broken by token id
    signals(logits, 0, float(logits.max()))
    top = signals.top(5)
    order = np.argsort(-logits.astype(np.float64), kind="stable")[:5]
    assert [t for t, _ in top] == order.tolist() and top[0][0] == 123 and top[1][0] == 456
    x = logits.astype(np.float64)
    lse = np.logaddexp.reduce(x)
    for t, lp in top:
        assert lp == pytest.approx(x[t] - lse, abs=2e-3)
    assert signals.top(0) == [] and len(signals.top(n + 10)) == n
