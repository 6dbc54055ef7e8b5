"""Mid-answer escalation: a sliding window over per-token confidence signals.

The monitor is fed each local token's log-probability and entropy and says when
the device should stop and hand the rest of the answer to the cloud: when the
mean log-probability over the last ``window`` tokens falls below
``min_mean_logprob``, or their mean entropy rises above ``max_mean_entropy``.
It holds only the window; no I/O and no clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgecloud.router._policies import Decision

__all__ = ["ConfidenceMonitor", "WindowThresholds", "window_extremes"]


@dataclass(frozen=True, slots=True)
class WindowThresholds:
    """When to hand off. ``-inf`` / ``inf`` disable a signal."""

    window: int = 8
    min_mean_logprob: float = -math.inf
    max_mean_entropy: float = math.inf
    min_tokens: int = 1
    """Tokens to generate before the window may fire (a full window is not required)."""
    max_local_tokens: int | None = None
    """Never escalate after this many local tokens (the answer is mostly written)."""


class ConfidenceMonitor:
    """Feeds on (logprob, entropy) per token; returns a hand-off decision once."""

    name = "confidence-window"

    def __init__(self, thresholds: WindowThresholds) -> None:
        if thresholds.window < 1:
            raise ValueError("window must be at least 1")
        self.t = thresholds
        self._lp: deque[float] = deque(maxlen=thresholds.window)
        self._ent: deque[float] = deque(maxlen=thresholds.window)
        self._sum_lp = 0.0
        self._sum_ent = 0.0
        self.tokens = 0
        self.fired: Decision | None = None

    def update(self, logprob: float, entropy: float) -> Decision | None:
        """Add one token's signals; returns a cloud decision the first time a threshold trips."""
        if self.fired is not None:
            return None
        if len(self._lp) == self._lp.maxlen:
            self._sum_lp -= self._lp[0]
            self._sum_ent -= self._ent[0]
        self._lp.append(logprob)
        self._ent.append(entropy)
        self._sum_lp += logprob
        self._sum_ent += entropy
        self.tokens += 1
        t = self.t
        if self.tokens < t.min_tokens or (
            t.max_local_tokens is not None and self.tokens > t.max_local_tokens
        ):
            return None
        n = len(self._lp)
        mean_lp, mean_ent = self._sum_lp / n, self._sum_ent / n
        reason = None
        if mean_lp < t.min_mean_logprob:
            reason = f"mean logprob {mean_lp:.2f} over {n} tokens < {t.min_mean_logprob:.2f}"
        elif mean_ent > t.max_mean_entropy:
            reason = f"mean entropy {mean_ent:.2f} over {n} tokens > {t.max_mean_entropy:.2f}"
        if reason is None:
            return None
        self.fired = Decision(
            "cloud", self.name, reason,
            signals={"window_mean_logprob": mean_lp, "window_mean_entropy": mean_ent,
                     "local_tokens": self.tokens},
        )  # fmt: skip
        return self.fired


def window_extremes(
    logprobs: Sequence[float], entropies: Sequence[float], window: int, min_tokens: int = 1
) -> tuple[float, float]:
    """(lowest window-mean logprob, highest window-mean entropy) over an answer, with the
    same windows :class:`ConfidenceMonitor` sees. ``(inf, -inf)`` when too short to fire."""
    lo, hi = math.inf, -math.inf
    for i in range(max(min_tokens, 1), len(logprobs) + 1):
        a = max(0, i - window)
        lo = min(lo, _mean(logprobs[a:i]))
        hi = max(hi, _mean(entropies[a:i]))
    return lo, hi


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)
