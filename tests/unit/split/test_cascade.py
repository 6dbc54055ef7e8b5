from __future__ import annotations

import numpy as np

from edgecloud.split import Cascade, margins


def test_margins() -> None:
    m = margins(np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]))
    assert m[0] == 0.0 and m[1] > 0.99


def test_calibration_picks_the_smallest_escalation_reaching_the_target() -> None:
    labels = np.array([0, 1, 0, 1])
    # device: confident right, confident right, unsure wrong, unsure right
    dev = np.array([[5.0, 0.0], [0.0, 5.0], [0.0, 0.1], [0.0, 0.2]])
    cloud = np.eye(2)[labels] * 5
    point = Cascade.calibrate(dev, cloud, labels, target=1.0)
    assert point.accuracy == 1.0
    assert point.escalation_rate == 0.25  # only the wrong unsure row needs the cloud
    calls: list[int] = []

    def cloud_fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return cloud[x[:, 0].astype(int)]

    idx = np.arange(4, dtype=np.float32)[:, None]
    c = Cascade(lambda x: dev[x[:, 0].astype(int)], cloud_fn, threshold=point.threshold)
    pred, esc = c.predict(idx)
    assert (pred == labels).all() and esc.sum() == 1 and calls == [1]
