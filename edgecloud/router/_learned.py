"""The learned pre-generation router: a logistic-regression head on prompt embeddings.

It predicts the probability that the local model's answer to a prompt will be
poor, from the prompt's sentence embedding (computed by the device with the small
ONNX encoder and passed in: the head itself only does arithmetic). It is trained
from the outcomes the escalation log records. Saved as JSON, never pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["LearnedRouter"]

FloatArray = npt.NDArray[np.float64]


class LearnedRouter:
    """``p(poor) = sigmoid(w · x + b)`` over embeddings ``x``.

    Args:
        weights: one weight per embedding dimension.
        bias: intercept.
        meta: anything to keep with the model (encoder name, training counts, metrics).
    """

    def __init__(
        self, weights: npt.ArrayLike, bias: float, meta: dict[str, Any] | None = None
    ) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = float(bias)
        self.meta = dict(meta or {})

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def predict(self, x: npt.ArrayLike) -> FloatArray:
        """Probabilities for a batch of embeddings of shape (n, dim) (or one of shape (dim,))."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape[-1] != self.dim:
            raise ValueError(
                f"embedding has {arr.shape[-1]} dimensions, the router expects {self.dim}"
            )
        z = arr @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -40, 40))))

    @classmethod
    def fit(
        cls,
        x: npt.ArrayLike,
        poor: Sequence[bool],
        *,
        l2: float = 1e-2,
        iterations: int = 50,
        meta: dict[str, Any] | None = None,
    ) -> LearnedRouter:
        """Fit by Newton's method on the L2-regularised log-loss (deterministic).

        Classes are weighted to balance, so a rare "poor" class still moves the head.
        """
        xs = np.asarray(x, dtype=np.float64)
        y = np.asarray(poor, dtype=np.float64)
        if xs.ndim != 2 or len(xs) != len(y) or len(y) == 0:
            raise ValueError("need a (n, dim) array and n labels")
        n_pos = y.sum()
        if n_pos in (0, len(y)):
            raise ValueError("need examples of both good and poor local answers")
        sample_w = np.where(y > 0, len(y) / (2 * n_pos), len(y) / (2 * (len(y) - n_pos)))
        design = np.hstack([xs, np.ones((len(xs), 1))])
        theta = np.zeros(design.shape[1])
        reg = np.full(design.shape[1], l2)
        reg[-1] = 0.0  # the intercept is not regularised
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -40, 40)))
            grad = design.T @ (sample_w * (p - y)) / len(y) + reg * theta
            hess_w = sample_w * p * (1 - p) / len(y)
            hess = (design * hess_w[:, None]).T @ design + np.diag(reg + 1e-9)
            step = np.linalg.solve(hess, grad)
            theta -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(theta[:-1], theta[-1], {**(meta or {}), "examples": len(y), "poor": int(n_pos)})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps({"weights": self.weights.tolist(), "bias": self.bias, "meta": self.meta})
        )

    @classmethod
    def load(cls, path: str | Path) -> LearnedRouter:
        """Raises ValueError when the file is not a router saved by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["weights"], data["bias"], data.get("meta"))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a saved LearnedRouter: {exc}") from exc
