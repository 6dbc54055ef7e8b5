"""``edgecloud split profile|run`` against a real split service on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecloud.cli.app import app
from edgecloud.split import BackgroundServer

pytestmark = pytest.mark.model

MODELS = Path(__file__).resolve().parents[2] / "examples" / "split" / "models"
CNN = MODELS / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with BackgroundServer({"digits_cnn": CNN}, threads=1) as srv:
        yield srv.address


def test_profile_prints_every_cut_and_the_choice(address: str) -> None:
    args = ["split", "profile", str(CNN), "--cloud", address, "--insecure", "--link", "10mbit",
            "--device-slowdown", "50", "--repeats", "1", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["cuts"]) == 17
    assert out["chosen"] in {c["cut"] for c in out["cuts"]}
    assert 5 < out["bandwidth_Bps"] * 8 / 1e6 < 15  # measured, about 10 Mbit/s


def test_run_chooses_a_cut_and_writes_the_outputs(address: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    frame = np.random.default_rng(0).random((1, 1, 64, 64)).astype(np.float32)
    np.save(tmp_path / "frame.npy", frame)
    args = ["split", "run", str(CNN), "--input", str(tmp_path / "frame.npy"), "--cloud", address,
            "--insecure", "--link", "100mbit", "--output", str(tmp_path / "out.npz")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["fallback"] is False and summary["cut_index"] in range(17)
    want = ort.InferenceSession(str(CNN)).run(["logits"], {"input": frame})[0]
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], want, atol=0.05)


def test_bad_inputs_exit_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    result = CliRunner().invoke(app, ["split", "profile", str(bad)])
    assert result.exit_code == 1 and "not a valid ONNX model" in result.output
    result = CliRunner().invoke(app, ["split", "run", str(CNN), "--input", str(bad)])
    assert result.exit_code == 2 and "cannot read" in result.output
    result = CliRunner().invoke(
        app,
        ["split", "run", str(CNN), "--input", str(bad), "--cloud", "127.0.0.1:1", "--link", "x"],
    )
    assert result.exit_code == 2 and "not a link bandwidth" in result.output
