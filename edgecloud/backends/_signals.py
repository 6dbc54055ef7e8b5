"""Per-token confidence signals from one step's logits, vectorized with numpy.

For logits ``x`` over the vocabulary, with ``lse = logsumexp(x)`` and
``p = exp(x - lse)``:

* log-probability of token ``t``: ``x[t] - lse``
* entropy: ``-sum(p * log p) = lse - sum(p * x)``

A few vectorized passes (shift, exp, sum, dot) into preallocated buffers:
on a 262k-token vocabulary this costs a few hundred microseconds, a few
percent of a decode step. No all-position logits are kept. The k most likely
tokens (``top_logprobs``) cost one more partial selection, only when asked for.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["StepSignals"]


class StepSignals:
    """Computes (logprob of the chosen token, entropy) for one step. Not thread-safe."""

    def __init__(self, n_vocab: int) -> None:
        self._shifted = np.empty(n_vocab, dtype=np.float32)
        self._weights = np.empty(n_vocab, dtype=np.float32)
        self._log_total = 0.0

    def __call__(
        self, logits: npt.NDArray[np.float32], token: int, top: float
    ) -> tuple[float, float]:
        """``top`` is ``logits.max()``, which greedy decoding has already found."""
        d, w = self._shifted, self._weights
        np.subtract(logits, top, out=d)  # d = x - max <= 0
        np.exp(d, out=w)
        total = float(w.sum(dtype=np.float64))
        log_total = math.log(total)
        # H = log(total) - sum(w * d) / total. Working on d rather than x avoids the
        # cancellation of lse - E[x] (two numbers near 15 whose difference is ~0.5).
        with np.errstate(invalid="ignore"):
            weighted = float(np.dot(w, d))
        if not math.isfinite(weighted):
            # -inf logits (masked tokens) make 0 * -inf = nan in the dot product.
            finite = np.isfinite(d)
            weighted = float(np.dot(w[finite], d[finite]))
        entropy = log_total - weighted / total
        self._log_total = log_total
        return float(d[token]) - log_total, max(entropy, 0.0)

    def top(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` most likely tokens of the step last passed to ``__call__`` and their
        log-probabilities, best first (ties by token id). Reuses that call's shifted
        logits: one partial selection over the vocabulary, no extra softmax."""
        d = self._shifted
        k = min(k, d.shape[0])
        if k <= 0:
            return []
        best = np.argpartition(d, -k)[-k:]
        ranked = sorted(best.tolist(), key=lambda t: (-float(d[t]), t))
        return [(t, float(d[t]) - self._log_total) for t in ranked]
