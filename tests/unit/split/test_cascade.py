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


def test_bootstrap_calibration_is_at_least_as_cautious() -> None:
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 10, n)
    cloud = np.eye(10)[labels] * 5
    noisy = rng.random(n) < 0.1  # the device is wrong on 10%, and unsure on those mostly
    dev = (
        np.eye(10)[np.where(noisy, (labels + 1) % 10, labels)] * np.where(noisy, 0.5, 4.0)[:, None]
    )
    dev += rng.normal(0, 0.3, dev.shape)
    plain = Cascade.calibrate(dev, cloud, labels, target=0.99)
    safe = Cascade.calibrate(dev, cloud, labels, target=0.99, bootstrap=500)
    assert safe.escalation_rate >= plain.escalation_rate
    assert safe.accuracy >= plain.accuracy
    assert safe.accuracy >= 0.99
