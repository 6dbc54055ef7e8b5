"""Thresholds calibrated on a held-out set: to a target escalation rate, or to a target
rate of answers wrong with no escalation; and AUROC."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgecloud.router._monitor import WindowThresholds, window_extremes

__all__ = [
    "Calibration",
    "WrongRateFit",
    "auroc",
    "calibrate_window",
    "fit_wrong_rate",
    "threshold_for_rate",
]


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


@dataclass(frozen=True, slots=True)
class WrongRateFit:
    """A confidence window fitted so few answers are wrong with no escalation.

    ``min_mean_logprob`` with ``window`` and ``min_tokens`` as in
    :class:`~edgecloud.router.WindowThresholds`; the rates are those achieved on the
    answers it was fitted on.
    """

    window: int
    min_mean_logprob: float
    min_tokens: int
    escalation_rate: float
    wrong_unescalated_rate: float
    examples: int

    def thresholds(self) -> WindowThresholds:
        return WindowThresholds(
            window=self.window, min_mean_logprob=self.min_mean_logprob, min_tokens=self.min_tokens
        )

    def escalates(self, logprobs: Sequence[float], entropies: Sequence[float]) -> bool:
        """Whether these thresholds hand off an answer with these per-token signals."""
        lo, _ = window_extremes(logprobs, entropies, self.window, self.min_tokens)
        return lo < self.min_mean_logprob


def fit_wrong_rate(
    answers: Sequence[tuple[Sequence[float], bool]],
    target: float,
    *,
    windows: Sequence[int] = (1, 2, 4, 8),
    min_tokens: int = 1,
    forced: Sequence[bool] | None = None,
) -> WrongRateFit:
    """The window and logprob threshold with the fewest escalations among those that leave
    at most ``target`` of ``answers`` wrong and unescalated.

    A wrong answer is fine when it escalates (the cloud answers instead); a right one
    that escalates costs a round trip. Every window in ``windows`` is tried with every
    threshold that separates two answers' scores (the lowest window mean logprob of an
    answer, as :class:`~edgecloud.router.ConfidenceMonitor` would see it); thresholds
    sit halfway between neighbouring scores. Ties in escalations go to the larger
    margin below the lowest-scoring unescalated answer, so small numeric differences
    on a device do not flip its decisions. An answer too short to be judged (fewer
    than ``min_tokens`` tokens) never escalates. When no threshold reaches the target,
    the one with the fewest wrong unescalated answers wins.

    Args:
        answers: (per-token logprobs, whether the answer was right) per held-out answer.
        target: the share of ``answers`` allowed to be wrong with no escalation.
        forced: answers another rule escalates whatever the threshold (a check of the
            answer against what the adapter learned); they count as escalated.

    Raises:
        ValueError: no answers, an empty ``windows``, or ``target`` outside [0, 1].
    """
    if not answers:
        raise ValueError("no answers to calibrate on")
    if not windows:
        raise ValueError("no windows to try")
    if not 0.0 <= target <= 1.0:
        raise ValueError("target must be in [0, 1]")
    n = len(answers)
    forced = list(forced) if forced is not None else [False] * n
    if len(forced) != n:
        raise ValueError("forced must have one flag per answer")
    best: tuple[tuple[float, float, float], WrongRateFit] | None = None
    for window in windows:
        scores = [window_extremes(lps, lps, window, min_tokens)[0] for lps, _ in answers]
        finite = sorted({s for s in scores if math.isfinite(s)})
        cuts = [-math.inf] + [(a + b) / 2 for a, b in itertools.pairwise(finite)]
        if finite:
            cuts.append(min(finite[-1] / 2, 0.0) if finite[-1] < 0 else 0.0)
        for thr in cuts:
            escalated = [s < thr or f for s, f in zip(scores, forced, strict=True)]
            wrong = sum(1 for (_, right), e in zip(answers, escalated, strict=True)
                        if not right and not e)  # fmt: skip
            rate, wrong_rate = sum(escalated) / n, wrong / n
            kept = [s for s, e in zip(scores, escalated, strict=True) if not e and math.isfinite(s)]
            margin = (min(kept) - thr) if kept and math.isfinite(thr) else math.inf
            over = max(0.0, wrong_rate - target)
            key = (over, rate, -margin)
            if best is None or key < best[0]:
                fit = WrongRateFit(window, thr, min_tokens, rate, wrong_rate, n)
                best = (key, fit)
    assert best is not None
    return best[1]
