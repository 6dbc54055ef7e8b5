from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgecloud.errors import InvalidCutError, ModelIntegrityError, ModelNotFoundError
from edgecloud.split import Partitioner
from tests.unit.split import graphs


def _run(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _split_run(p: Partitioner, cut_index: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
    cut = p.cuts()[cut_index]
    head, tail = p.split(cut)
    acts = _run(head, feeds) if head is not None else {n: feeds[n] for n in cut.tensors}
    assert set(acts) == set(cut.tensors)
    out = _run(tail, acts) if tail is not None else acts
    return out[p.outputs[0]]


@pytest.mark.parametrize("build", [graphs.chain, graphs.residual])
def test_head_then_tail_equals_the_whole_graph_at_every_cut(build: Any, tmp_path: Path) -> None:
    path = build(tmp_path / "m.onnx")
    p = Partitioner(path)
    width = p.tensor(p.inputs[0]).shape[1]
    x = np.random.default_rng(0).standard_normal((3, width)).astype(np.float32)
    whole = _run(p.model, {p.inputs[0]: x})[p.outputs[0]]
    assert len(p.cuts()) >= 3
    for i in range(len(p.cuts())):
        np.testing.assert_allclose(_split_run(p, i, {p.inputs[0]: x}), whole, rtol=1e-6, atol=1e-6)


def test_cuts_are_ordered_and_include_all_cloud_and_all_device(tmp_path: Path) -> None:
    p = Partitioner(graphs.chain(tmp_path / "m.onnx"))
    names = [c.name for c in p.cuts()]
    assert names == ["x", "h1", "r1", "h2", "r2", "y"]
    assert [c.index for c in p.cuts()] == list(range(6))
    assert [c.head_nodes for c in p.cuts()] == [0, 1, 2, 3, 4, 5]
    assert p.split(p.cuts()[0])[0] is None  # all-cloud: nothing runs here
    assert p.split(p.cuts()[-1])[1] is None  # all-device: nothing runs there


def test_a_tensor_inside_a_skip_connection_is_not_a_cut(tmp_path: Path) -> None:
    p = Partitioner(graphs.residual(tmp_path / "m.onnx"))
    names = [c.name for c in p.cuts()]
    assert "b" not in names and "b0" not in names
    assert "a" in names and "c" in names
    with pytest.raises(InvalidCutError, match="does not separate"):
        p.cut("b")
    # but {a, b} together do separate the graph
    cut = p.cut(["a", "b"])
    head, tail = p.split(cut)
    x = np.ones((2, 6), dtype=np.float32)
    acts = _run(head, {"x": x})
    np.testing.assert_allclose(_run(tail, acts)["y"], _run(p.model, {"x": x})["y"], rtol=1e-6)


def test_an_input_that_bypasses_the_cut_is_reported(tmp_path: Path) -> None:
    p = Partitioner(graphs.two_inputs(tmp_path / "m.onnx"))
    with pytest.raises(InvalidCutError, match="x2"):
        p.check_separates(["r"])
    p.check_separates(["r", "x2"])
    assert [c.name for c in p.cuts()] == ["x1+x2", "y"]


def test_unknown_tensors_and_indices_are_invalid_cuts(tmp_path: Path) -> None:
    p = Partitioner(graphs.chain(tmp_path / "m.onnx"))
    with pytest.raises(InvalidCutError, match="no tensor named 'nope'"):
        p.cut("nope")
    with pytest.raises(InvalidCutError, match="out of range"):
        p.cut(99)
    with pytest.raises(InvalidCutError, match="at least one"):
        p.check_separates([])
    with pytest.raises(InvalidCutError):
        p.tensor("nope")


def test_a_file_that_is_not_onnx_does_not_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ModelIntegrityError, match="not a valid ONNX model"):
        Partitioner(bad)
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(graphs.chain(tmp_path / "ok.onnx").read_bytes()[:100])
    with pytest.raises(ModelIntegrityError):
        Partitioner(truncated)
    with pytest.raises(ModelNotFoundError):
        Partitioner(tmp_path / "missing.onnx")


def test_activation_sizes_come_from_shape_inference(tmp_path: Path) -> None:
    p = Partitioner(graphs.chain(tmp_path / "m.onnx"))
    info = p.tensor("r1")
    assert (info.dtype, info.shape) == ("float32", (None, 16))
    assert info.nbytes(batch=2) == 2 * 16 * 4
