"""The KServe v2 service driven by the official Triton client (``tritonclient[grpc]``).

tritonclient registers its own copy of the ``inference`` protobuf package in the
process-wide descriptor pool, as does our server, and protobuf refuses the same
symbols twice in one process. So the server runs here and the Triton client
runs in a child process, printing what it saw as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecloud.split import BackgroundServer

pytestmark = pytest.mark.model

if importlib.util.find_spec("tritonclient") is None:  # not importorskip: see the docstring
    pytest.skip(
        "tritonclient is not installed (it comes with the dev extra)", allow_module_level=True
    )

MODELS = Path(__file__).resolve().parents[2] / "examples" / "split" / "models"
CNN = MODELS / "digits_cnn.onnx"

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    url, frame_path = sys.argv[1], sys.argv[2]
    client = tc.InferenceServerClient(url=url)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("digits_cnn"),
        "unknown_ready": client.is_model_ready("nope"),
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata("digits_cnn", as_json=True),
    }
    frame = np.load(frame_path)
    inp = tc.InferInput("input", list(frame.shape), "FP32")
    inp.set_data_from_numpy(frame)
    result = client.infer("digits_cnn", [inp], outputs=[tc.InferRequestedOutput("logits")])
    out["logits"] = result.as_numpy("logits").tolist()
    errors = {}
    try:
        client.infer("nope", [inp])
    except InferenceServerException as exc:
        errors["unknown_model"] = [exc.status(), exc.message()]
    bad = tc.InferInput("input", [1, 1, 32, 32], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 32, 32), np.float32))
    try:
        client.infer("digits_cnn", [bad])
    except InferenceServerException as exc:
        errors["bad_shape"] = [exc.status(), exc.message()]
    wrong = tc.InferInput("input", [1, 1, 64, 64], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 1, 64, 64), np.float64))
    try:
        client.infer("digits_cnn", [wrong])
    except InferenceServerException as exc:
        errors["bad_dtype"] = [exc.status(), exc.message()]
    try:
        client.get_model_metadata("nope")
    except InferenceServerException as exc:
        errors["unknown_metadata"] = [exc.status(), exc.message()]
    out["errors"] = errors
    client.close()
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    frame = np.random.default_rng(3).random((2, 1, 64, 64)).astype(np.float32)
    path = tmp_path_factory.mktemp("kserve") / "frame.npy"
    np.save(path, frame)
    with BackgroundServer({"digits_cnn": CNN}, threads=1) as srv:
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT, srv.address, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["frame"] = frame
    yield out


def test_health_and_metadata(seen: dict[str, Any]) -> None:
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["unknown_ready"] is False
    assert seen["server"]["name"] == "edgecloud"
    meta = seen["metadata"]
    assert meta["name"] == "digits_cnn"
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "64", "64"]}
    ]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]


def test_infer_matches_onnxruntime(seen: dict[str, Any]) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(CNN), providers=["CPUExecutionProvider"])
    want = sess.run(["logits"], {"input": seen["frame"]})[0]
    np.testing.assert_allclose(np.array(seen["logits"], np.float32), want, rtol=1e-6, atol=1e-6)


def test_bad_requests_get_clear_errors(seen: dict[str, Any]) -> None:
    errors = seen["errors"]
    status, message = errors["unknown_model"]
    assert status == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in message
    assert errors["unknown_metadata"][0] == "StatusCode.NOT_FOUND"
    status, message = errors["bad_shape"]
    assert status == "StatusCode.INVALID_ARGUMENT" and "shape" in message
    status, message = errors["bad_dtype"]
    assert status == "StatusCode.INVALID_ARGUMENT" and "float64" in message
