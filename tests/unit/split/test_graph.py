"""Cuts as tensor sets on the node graph, and the min-cut against brute force."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgecloud.errors import InvalidCutError
from edgecloud.split import Partitioner
from edgecloud.split._graph import Dag, GraphCosts, max_flow_min_cut
from tests.unit.split import graphs


def _run(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    feeds = {k: v for k, v in feeds.items() if k in wanted}
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _masked_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((2, 6), np.int64)
    mask[1, 4:] = 0
    return {"x": rng.standard_normal((2, 6)).astype(np.float32), "mask": mask}


def _cost(dag: Dag, costs: GraphCosts, device: set[str], bw: float) -> float:
    """The cost the min-cut minimizes, computed directly from a partition."""
    total = sum(costs.device_s[n] for n in device)
    total += sum(costs.cloud_s[n.name] for n in dag.nodes if n.name not in device)
    sent = {
        t
        for n in dag.nodes
        if n.name not in device
        for t in n.inputs
        if dag.producer.get(t, "<in>") in device or t in dag.inputs
    }
    total += sum(costs.tensor_bytes[t] for t in sent) / bw
    made_there = [t for t in dag.outputs if dag.producer.get(t) not in device]
    return total + sum(costs.output_bytes[t] for t in made_there) / bw


def _closed(dag: Dag, device: set[str]) -> bool:
    return all(dag.producer[t] in device for n in dag.nodes if n.name in device
               for t in n.inputs if t in dag.producer)  # fmt: skip


def test_every_prefix_cut_of_a_masked_graph_carries_the_mask_and_reproduces_the_outputs(
    tmp_path: Path,
) -> None:
    p = Partitioner(graphs.masked(tmp_path / "m.onnx"))
    feeds = _masked_feeds()
    whole = _run(p.model, feeds)["y"]
    single = {c.name for c in p.cuts()}
    multi = [c for c in p.multi_cuts() if c.name not in single]
    # inside the two layers no single tensor separates: the bias travels with the hidden state
    assert [c.name for c in multi] == [
        "mf+x", "x+bias", "a0+bias", "a1+bias", "h1+bias", "b0+bias", "b1+bias"
    ]  # fmt: skip
    for cut in p.multi_cuts():
        head, tail = p.split(cut)
        acts = _run(head, feeds) if head is not None else {n: feeds[n] for n in cut.tensors}
        out = _run(tail, acts)["y"] if tail is not None else acts["y"]
        np.testing.assert_allclose(out, whole, rtol=1e-6, atol=1e-6, err_msg=cut.name)
    # the constant-only node is recomputed on either side, never sent
    assert p.dag.duplicable == {"const_add"}
    assert all("four" not in c.tensors for c in p.multi_cuts())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("build", [graphs.masked, graphs.residual, graphs.two_inputs])
def test_min_cut_equals_brute_force_over_all_closed_partitions(
    build: Any, seed: int, tmp_path: Path
) -> None:
    p = Partitioner(build(tmp_path / "m.onnx"))
    dag = p.dag
    rng = np.random.default_rng(seed)
    names = [n.name for n in dag.nodes]
    tensors = set(dag.inputs) | set(dag.producer)
    costs = GraphCosts(
        device_s={n: float(rng.uniform(0.001, 0.05)) for n in names},
        cloud_s={n: float(rng.uniform(0.0, 0.005)) for n in names},
        tensor_bytes={t: int(rng.integers(10, 50_000)) for t in tensors},
        output_bytes={t: int(rng.integers(10, 5_000)) for t in dag.outputs},
    )
    for bw in (1e4, 1e5, 1e6, 1e7):
        best = min(
            _cost(dag, costs, set(sub), bw)
            for k in range(len(names) + 1)
            for sub in itertools.combinations(names, k)
            if _closed(dag, set(sub))
        )
        device = dag.min_cut(costs, bw)
        assert _closed(dag, device)
        assert _cost(dag, costs, device, bw) == pytest.approx(best, rel=1e-6, abs=1e-8)
        # and the partition is a cut the partitioner accepts
        p.check_separates(p.cut_of(device).tensors)


def test_max_flow_on_a_textbook_network() -> None:
    # CLRS 26.1: max flow 23; the min cut separates {s, v1, v2, v4} from {v3, t}
    edges = [(0, 1, 16), (0, 2, 13), (1, 3, 12), (2, 1, 4), (2, 4, 14), (3, 2, 9),
             (3, 5, 20), (4, 3, 7), (4, 5, 4)]  # fmt: skip
    side = max_flow_min_cut(6, edges, 0, 5)
    assert side == [True, True, True, False, True, False]
    cut = sum(c for u, v, c in edges if side[u] and not side[v])
    assert cut == 23


def test_control_flow_runs_whole_and_a_middle_cut_is_refused(tmp_path: Path) -> None:
    p = Partitioner(graphs.with_if(tmp_path / "m.onnx"))
    assert "control flow" in p.unsupported and "If" in p.unsupported
    assert [c.name for c in p.cuts()] == ["x+cond", "y"]
    assert p.multi_cuts() == p.cuts()
    with pytest.raises(InvalidCutError, match="control flow"):
        p.cut(["h", "cond"])
    # all-cloud is the whole graph, subgraphs included
    x = np.ones((1, 4), np.float32)
    tail = p.tail(p.cuts()[0])
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        np.testing.assert_allclose(_run(tail, feeds)["y"], _run(p.model, feeds)["y"])


def test_an_output_no_input_reaches_is_computed_on_either_side(tmp_path: Path) -> None:
    p = Partitioner(graphs.constant_output(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32)
    whole = _run(p.model, {"x": x})
    assert p.dag.duplicable == {"sum"}  # weights only: recomputed, never sent
    for cut in p.multi_cuts():
        head, tail = p.split(cut)
        acts = _run(head, {"x": x}) if head is not None else {"x": x}
        out = _run(tail, acts) if tail is not None else acts
        for name in ("y", "c"):
            np.testing.assert_allclose(out[name], whole[name], rtol=1e-6, err_msg=cut.name)


def test_cuts_that_do_not_exist_are_refused(tmp_path: Path) -> None:
    p = Partitioner(graphs.masked(tmp_path / "m.onnx"))
    with pytest.raises(InvalidCutError, match="no tensor named 'nope'"):
        p.cut("h1+nope")
    with pytest.raises(InvalidCutError, match="does not separate"):
        p.cut("h1")  # the bias still reaches the outputs around it
    assert p.cut("h1+bias").tensors == ("h1", "bias")
