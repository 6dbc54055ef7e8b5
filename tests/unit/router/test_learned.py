from pathlib import Path

import numpy as np
import pytest

from edgecloud.router import LearnedRouter, auroc


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.zeros(16)
    w[:3] = [4.0, -3.0, 2.0]
    y = rng.random(n) < 1 / (1 + np.exp(-(x @ w * 3 - 1)))
    return x, y


def test_fit_learns_a_separable_signal_and_generalises() -> None:
    x, y = _data(400, 0)
    router = LearnedRouter.fit(x, y)
    xt, yt = _data(400, 1)
    assert auroc(router.predict(xt).tolist(), yt.tolist()) > 0.85


def test_fit_is_deterministic_and_roundtrips_as_json(tmp_path: Path) -> None:
    x, y = _data(100, 2)
    a, b = LearnedRouter.fit(x, y, meta={"encoder": "minilm"}), LearnedRouter.fit(x, y)
    np.testing.assert_array_equal(a.weights, b.weights)
    a.save(tmp_path / "router.json")
    c = LearnedRouter.load(tmp_path / "router.json")
    np.testing.assert_allclose(c.predict(x), a.predict(x))
    assert c.meta["encoder"] == "minilm" and c.meta["examples"] == 100


def test_bad_inputs() -> None:
    x, y = _data(20, 3)
    with pytest.raises(ValueError, match="both"):
        LearnedRouter.fit(x, np.zeros(20, bool))
    with pytest.raises(ValueError, match="dimensions"):
        LearnedRouter.fit(x, y).predict(np.zeros(5))


def test_load_rejects_other_files(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a saved LearnedRouter"):
        LearnedRouter.load(p)
