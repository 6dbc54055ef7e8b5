"""Per-token confidence signals from one step's logits, vectorized with numpy.

For logits ``x`` over the vocabulary, with ``lse = logsumexp(x)`` and
``p = exp(x - lse)``:

* log-probability of token ``t``: ``x[t] - lse``
* entropy: ``-sum(p * log p) = lse - sum(p * x)``

Three passes over the vocabulary (max, exp, dot) into one preallocated buffer:
on a 262k-token vocabulary this costs a few hundred microseconds, a few
percent of a decode step. No all-position logits are kept.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["StepSignals"]


class StepSignals:
    """Computes (logprob of the chosen token, entropy) for one step. Not thread-safe."""

    def __init__(self, n_vocab: int) -> None:
        self._buf = np.empty(n_vocab, dtype=np.float32)

    def __call__(self, logits: npt.NDArray[np.float32], token: int, top: float) -> tuple[float, float]:
        """``top`` is ``logits.max()``, which greedy decoding has already found."""
        buf = self._buf
        np.subtract(logits, top, out=buf)
        np.exp(buf, out=buf)
        total = float(buf.sum(dtype=np.float64))
        expected = float(np.dot(buf, logits)) / total
        lse = top + math.log(total)
        entropy = lse - expected
        if not math.isfinite(entropy):
            # -inf logits (masked tokens) make the dot product nan; fall back.
            finite = np.isfinite(logits)
            expected = float(np.dot(buf[finite], logits[finite])) / total
            entropy = lse - expected
        return float(logits[token]) - lse, max(entropy, 0.0)
