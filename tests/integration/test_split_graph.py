"""Multi-tensor cuts, the min-cut planner and pipelined frames over real gRPC on 127.0.0.1.

The models are small versions of ``examples/split/build_models.py`` (random
weights, exported by torch into a temporary directory in about a second).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edgecloud.cli.app import app
from edgecloud.errors import InvalidCutError, InvalidRequestError, ModelIntegrityError
from edgecloud.split import (
    BackgroundServer,
    EmulatedLink,
    Partitioner,
    SplitClient,
    SplitModel,
    predict,
)
from edgecloud.split._graph import RECOMPUTABLE
from tests.unit.split import graphs

pytestmark = pytest.mark.model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "split"))
import build_models  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("split-graph")
    return {
        "encoder": build_models.export_encoder(d / "encoder.onnx", small=True, seq=16),
        "vgg": build_models.export_vgg(d / "vgg.onnx", small=True),
    }


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[BackgroundServer]:
    with BackgroundServer(dict(models), threads=1) as srv:
        yield srv


def _tokens(seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seq)
    mask = np.ones((1, seq), np.int64)
    mask[0, seq * 3 // 4 :] = 0  # padding at the end: the mask matters
    return {"input_ids": rng.integers(0, 256, (1, seq)).astype(np.int64), "attention_mask": mask}


def _image(seed: int = 0) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).random((1, 3, 64, 64)).astype(np.float32)}


def _whole(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def test_encoder_middle_cuts_are_sets_with_the_mask_and_match_the_whole_model(
    server: BackgroundServer, models: dict[str, Path]
) -> None:
    feeds = _tokens(16)
    whole = _whole(models["encoder"], feeds)
    client = SplitClient(server.address)
    with SplitModel(models["encoder"], client, encoding="float32") as model:
        p = model.partitioner
        middle = [c for c in model.cuts[1:-1] if len(c.tensors) > 1]
        assert len(middle) > 20
        # one tensor, derived from the mask alone, travels with most middle cuts
        bias, count = Counter(t for c in middle for t in c.tensors).most_common(1)[0]
        assert count > len(middle) // 2
        assert p._reaches_input([bias], stop=set()) == "attention_mask"
        # what the cloud can recompute from the rest of a cut (a Shape of a tensor it
        # gets, a Gather of that shape) does not cross
        dag = p.dag
        for cut in model.cuts:
            for t in cut.tensors:
                made = dag.producer.get(t)
                if made is not None and t not in p.outputs:
                    node = next(n for n in dag.nodes if n.name == made)
                    assert node.op not in RECOMPUTABLE or not set(node.inputs) <= set(
                        cut.tensors
                    ), (cut.name, t)
        assert all(len(c.tensors) <= 5 for c in model.cuts)
        for cut in middle[:: max(1, len(middle) // 8)]:
            out = model.run(feeds, cut=cut.index)["hidden"]
            np.testing.assert_allclose(out, whole, rtol=1e-4, atol=1e-4, err_msg=cut.name)
            assert model.last is not None and not model.last.fallback


def test_profile_resolves_dynamic_dims_and_the_min_cut_joins_the_choice(
    server: BackgroundServer, models: dict[str, Path]
) -> None:
    client = SplitClient(server.address, link=EmulatedLink(20e6, 0.01))
    with SplitModel(models["encoder"], client, device_slowdown=5) as model:
        sizes = {}
        for seq in (8, 32):
            model.profile(_tokens(seq), repeats=1)
            costs = model.graph_costs
            assert costs is not None
            sizes[seq] = costs.tensor_bytes["hidden"]
            # every node has a time on both sides, and the cloud's are its own
            names = {n.name for n in model.partitioner.dag.nodes}
            assert names <= set(costs.device_s) and names <= set(costs.cloud_s)
        assert sizes[32] == 4 * sizes[8] == 4 * 8 * 32 * 2  # float16 on the wire
        # the min-cut is the cheapest partition: no prefix cut is predicted faster
        planned = model.plan()
        assert planned is not None
        model.partitioner.check_separates(planned.cut.tensors)
        link, power = model.link.estimate, model.power
        floor = predict(model.graph_profile(planned.cut), link, power).latency_s
        others = [predict(m, link, power).latency_s for m in model.multi_profiles()]
        assert floor <= min(others) + 1e-9
        best, _ = model.choose()
        assert best.latency_s <= predict(planned, link, power).latency_s
        out = model.run(_tokens(32))["hidden"]
        np.testing.assert_allclose(out, _whole(models["encoder"], _tokens(32)), atol=0.05)


def test_run_profiles_on_its_first_frame(server: BackgroundServer, models: dict[str, Path]) -> None:
    with SplitModel(models["encoder"], SplitClient(server.address)) as model:
        out = model.run(_tokens(24))["hidden"]
        assert model.graph_costs is not None
        # sizes at the frame's sequence length (24), not a guessed 1
        assert model.graph_costs.tensor_bytes["hidden"] == 24 * 32 * 2
        np.testing.assert_allclose(out, _whole(models["encoder"], _tokens(24)), atol=0.05)


def test_stream_keeps_order_and_overlaps_the_device_with_the_link(
    server: BackgroundServer, models: dict[str, Path]
) -> None:
    frames = [_image(i) for i in range(8)]
    want = [_whole(models["vgg"], f) for f in frames]
    client = SplitClient(server.address, link=EmulatedLink(5e6, 0.04))
    with SplitModel(models["vgg"], client, device_slowdown=300, encoding="float32") as model:
        waist = next(c for c in model.cuts if c.name.endswith("/8/MaxPool_output_0"))
        model.run(frames[0], cut=waist.index)  # warm the tail
        t0 = time.perf_counter()
        one = [model.run(f, cut=waist.index)["logits"] for f in frames]
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        piped = [o["logits"] for o in model.stream(frames, cut=waist.index, max_in_flight=3)]
        pipelined = time.perf_counter() - t0
    for a, b, w in zip(one, piped, want, strict=True):
        np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(b, w, rtol=1e-4, atol=1e-4)
    # head (slowed down) and round trip are comparable: pipelining hides most of one
    assert sequential / pipelined > 1.25, (sequential, pipelined)


def test_a_cloud_that_dies_between_frames_falls_back_here(models: dict[str, Path]) -> None:
    frames = [_image(i) for i in range(6)]
    srv = BackgroundServer({"vgg": models["vgg"]}, threads=1)
    client = SplitClient(srv.address, timeout_s=2.0)

    def camera() -> Iterator[dict[str, np.ndarray]]:
        for i, f in enumerate(frames):
            if i == 3:
                srv.close()
            yield f

    with SplitModel(models["vgg"], client, cloud_retry_s=60) as model:
        results, fallback = [], []
        for out in model.stream(camera(), cut=4, max_in_flight=2):
            assert model.last is not None
            results.append(out["logits"])
            fallback.append(model.last.fallback)
    assert fallback[:2] == [False, False] and fallback[-1]
    for got, f in zip(results, frames, strict=True):
        np.testing.assert_allclose(got, _whole(models["vgg"], f), rtol=1e-3, atol=1e-3)


def test_bad_inputs_and_cuts_are_refused_before_the_wire(
    server: BackgroundServer, models: dict[str, Path]
) -> None:
    with SplitModel(models["encoder"], SplitClient(server.address)) as model:
        good = _tokens(16)
        with pytest.raises(InvalidRequestError, match=r"'input_ids' is int32"):
            model.run({**good, "input_ids": good["input_ids"].astype(np.int32)}, cut=0)
        with pytest.raises(InvalidRequestError, match=r"'attention_mask' is int64 \(16,\)"):
            model.run({**good, "attention_mask": good["attention_mask"][0]}, cut=5)
        with pytest.raises(InvalidRequestError, match=r"missing \['attention_mask'\]"):
            model.run({"input_ids": good["input_ids"]}, cut=0)
        with pytest.raises(InvalidCutError, match="no tensor named 'nope'"):
            model.run(good, cut="hidden+nope")
        with pytest.raises(InvalidCutError, match="out of range"):
            model.run(good, cut=10_000)
        with pytest.raises(InvalidCutError, match="does not separate"):
            model.run(good, cut=model.cuts[5].tensors[0])


def test_an_op_no_runtime_has_is_refused_at_load(tmp_path: Path) -> None:
    path = graphs.custom_op(tmp_path / "custom.onnx")
    assert len(Partitioner(path).cuts()) == 3  # the graph itself is fine
    with pytest.raises(ModelIntegrityError, match="onnxruntime cannot load"):
        BackgroundServer({"custom": path})
    with pytest.raises(ModelIntegrityError, match="onnxruntime cannot load"):
        SplitModel(path)


def test_cli_profile_lists_the_multi_tensor_cuts(
    server: BackgroundServer, models: dict[str, Path]
) -> None:
    args = ["split", "profile", str(models["encoder"]), "--cloud", server.address, "--insecure",
            "--link", "10mbit", "--device-slowdown", "10", "--repeats", "1", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["multi_cuts"]) > 20
    assert all(r["tensors"] >= 2 and r["predicted_ms"] > 0 for r in out["multi_cuts"])
    assert out["chosen"]


def test_the_cloud_refuses_a_node_profile_of_the_wrong_inputs_or_size(
    server: BackgroundServer,
) -> None:
    with SplitClient(server.address) as client:
        sha, tails, nodes = client.profile_nodes("encoder", _tokens(8), repeats=1)
        assert len(sha) == 64 and tails and len(nodes) > 50
        with pytest.raises(InvalidRequestError, match="the graph's inputs are"):
            client.profile_nodes("encoder", {"input_ids": _tokens(8)["input_ids"]})
        # only the shape travels: a view of a 8 GB array costs nothing here
        huge = np.broadcast_to(np.zeros((), np.int64), (1, 1 << 30))
        with pytest.raises(InvalidRequestError, match="oversized shape"):
            client.profile_nodes("encoder", {"input_ids": huge, "attention_mask": huge})
