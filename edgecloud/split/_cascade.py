"""Confidence cascade: the device classifier answers unless its top-1 margin is small.

The margin is the gap between the two largest softmax probabilities. Inputs
under the threshold escalate to the larger cloud model. The threshold is
calibrated on held-out data to the smallest escalation rate whose cascade
accuracy reaches a target fraction of the cloud model's accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Cascade", "margins"]


def margins(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Top-1 minus top-2 softmax probability, per row."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0], dtype=np.float64)


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    escalation_rate: float
    accuracy: float


class Cascade:
    """Device model first, cloud model for the uncertain rest.

    Args:
        device: logits of the device model for a batch.
        cloud: logits of the cloud model for a batch (a remote call).
        threshold: escalate when the device margin is below this.
    """

    def __init__(
        self,
        device: Callable[[npt.NDArray[Any]], npt.NDArray[Any]],
        cloud: Callable[[npt.NDArray[Any]], npt.NDArray[Any]],
        threshold: float = 0.5,
    ) -> None:
        self.device = device
        self.cloud = cloud
        self.threshold = threshold

    def predict(self, x: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Predicted classes and which rows escalated."""
        d = np.asarray(self.device(x))
        pred = d.argmax(axis=1).astype(np.int64)
        esc = margins(d) < self.threshold
        if esc.any():
            pred[esc] = np.asarray(self.cloud(x[esc])).argmax(axis=1)
        return pred, esc

    @staticmethod
    def curve(
        device_logits: npt.NDArray[Any], cloud_logits: npt.NDArray[Any], labels: npt.NDArray[Any]
    ) -> list[CurvePoint]:
        """Accuracy vs escalation rate for every distinct threshold (from precomputed logits)."""
        m = margins(device_logits)
        d_ok = device_logits.argmax(1) == labels
        c_ok = cloud_logits.argmax(1) == labels
        points = [CurvePoint(0.0, 0.0, float(d_ok.mean()))]
        for t in np.unique(np.concatenate([m, [np.inf]])):
            esc = m < t
            acc = float(np.where(esc, c_ok, d_ok).mean())
            points.append(CurvePoint(float(t), float(esc.mean()), acc))
        return points

    @staticmethod
    def calibrate(
        device_logits: npt.NDArray[Any],
        cloud_logits: npt.NDArray[Any],
        labels: npt.NDArray[Any],
        target: float = 0.99,
        *,
        bootstrap: int = 0,
        quantile: float = 0.05,
        seed: int = 0,
    ) -> CurvePoint:
        """The lowest-escalation point whose accuracy is >= ``target`` x the cloud's accuracy.

        With ``bootstrap > 0`` the choice is conservative: the ratio of cascade to
        cloud accuracy must reach ``target`` in all but ``quantile`` of
        ``bootstrap`` resamples of the calibration set. A few hundred calibration
        inputs make the plain choice optimistic on new data; this trades a higher
        escalation rate for a target that holds.
        """
        m = margins(device_logits)
        d_ok = device_logits.argmax(1) == labels
        c_ok = cloud_logits.argmax(1) == labels
        points = Cascade.curve(device_logits, cloud_logits, labels)
        if bootstrap <= 0:
            goal = target * float(c_ok.mean())
            ok = [p for p in points if p.accuracy >= goal]
            return min(ok, key=lambda p: (p.escalation_rate, p.threshold))
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(labels), size=(bootstrap, len(labels)))
        cloud_acc = c_ok[idx].mean(axis=1)
        for p in sorted(points[1:], key=lambda p: (p.escalation_rate, p.threshold)):
            esc = m < p.threshold
            acc = np.where(esc, c_ok, d_ok)[idx].mean(axis=1)
            if np.quantile(acc / np.maximum(cloud_acc, 1e-12), quantile) >= target:
                return p
        return points[-1]
