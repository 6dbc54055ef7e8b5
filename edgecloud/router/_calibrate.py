"""Thresholds calibrated to a target escalation rate on a held-out set, and AUROC."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgecloud.router._monitor import WindowThresholds, window_extremes

__all__ = ["Calibration", "auroc", "calibrate_window", "threshold_for_rate"]


def threshold_for_rate(scores: Sequence[float], rate: float, *, higher_escalates: bool) -> float:
    """The threshold at which a fraction ``rate`` of ``scores`` escalates.

    With ``higher_escalates`` a score escalates when ``score > threshold``, otherwise
    when ``score < threshold``. Ties at the threshold do not escalate, so the achieved
    rate is at most ``rate``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be in [0, 1]")
    finite = sorted(s for s in scores if math.isfinite(s))
    if not finite:
        raise ValueError("no finite scores to calibrate on")
    k = math.floor(rate * len(scores))
    # Order the scores from most to least escalating; the threshold sits between the
    # k-th and (k+1)-th of them.
    ordered = finite[::-1] if higher_escalates else finite
    step = -1e-9 if higher_escalates else 1e-9
    if k == 0:
        return math.inf if higher_escalates else -math.inf
    if k >= len(ordered):
        return ordered[-1] + step
    return (ordered[k - 1] + ordered[k]) / 2


@dataclass(frozen=True, slots=True)
class Calibration:
    thresholds: WindowThresholds
    signal: str
    target_rate: float
    achieved_rate: float
    examples: int


def calibrate_window(
    answers: Sequence[tuple[Sequence[float], Sequence[float]]],
    target_rate: float,
    *,
    signal: str = "logprob",
    window: int = 8,
    min_tokens: int = 4,
) -> Calibration:
    """Pick the window threshold on one signal so ``target_rate`` of answers escalate.

    Args:
        answers: (per-token logprobs, per-token entropies) of the local answer to each
            held-out prompt.
        signal: ``"logprob"`` (low mean escalates) or ``"entropy"`` (high mean escalates).
    """
    if signal not in ("logprob", "entropy"):
        raise ValueError("signal must be 'logprob' or 'entropy'")
    ext = [window_extremes(lp, ent, window, min_tokens) for lp, ent in answers]
    if signal == "logprob":
        scores = [lo for lo, _ in ext]
        thr = threshold_for_rate(scores, target_rate, higher_escalates=False)
        t = WindowThresholds(window=window, min_mean_logprob=thr, min_tokens=min_tokens)
        achieved = sum(s < thr for s in scores) / len(scores)
    else:
        scores = [hi for _, hi in ext]
        thr = threshold_for_rate(scores, target_rate, higher_escalates=True)
        t = WindowThresholds(window=window, max_mean_entropy=thr, min_tokens=min_tokens)
        achieved = sum(s > thr for s in scores) / len(scores)
    return Calibration(t, signal, target_rate, achieved, len(answers))


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve: the probability that a random positive scores higher
    than a random negative (ties count half). ``nan`` without both classes."""
    pairs = sorted(zip(scores, positives, strict=True), key=lambda p: p[0])
    n_pos = sum(positives)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2  # 1-based average rank of the tie group
        rank_sum += avg_rank * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
