"""Split-inference benchmark: the chosen cut vs every cut, on emulated links.

Serves the digits CNN (``examples/split/models/digits_cnn.onnx``) from the
split service on 127.0.0.1 and, for emulated links of 1, 10 and 100 Mbit/s with
20 ms RTT (``EmulatedLink``: the client sleeps RTT/2 + bytes/bandwidth around
each real gRPC message on loopback), records:

* the cut ``SplitModel`` chooses from its profile and live link estimate, and
  the end-to-end latency of calls that let it choose (``run(x)``);
* the measured end-to-end latency of *every* cut (``run(x, cut=i)``), so the
  best cut is found by trying them all; the figure asked for is chosen / best
  <= 1.10 at every link speed;
* all-local and all-cloud, the two strategies without a split;
* one model running at 10 Hz while the link goes 100 -> 1 -> 100 Mbit/s:
  the cut it picks call by call (it must follow the link);
* top-1 accuracy on the digits test split through the split at every cut with
  float32, float16 and int8 activations (batched, chunked over the real wire),
  against the whole model; the figure asked for is an int8 loss <= 0.5 points.

The device is this host slowed down by ``--device-slowdown`` (default 100):
after each head runs, the device waits (factor - 1) x its measured time. This
host runs the whole CNN in about 0.3 ms; a robot's Cortex-A-class CPU is one to
two orders of magnitude slower, and without the factor every link would make
all-local the trivial answer. The cloud tail runs at this host's speed.

Writes ``bench/results/split.json`` and ``bench/results/split.png`` (latency
per cut, measured and predicted, per link) and prints a table.

``--part graph`` benchmarks the min-cut planner on the two models of
``examples/split/build_models.py`` (built if missing, random weights), over the
same emulated links:

* ``vgg_small`` (3x224x224, features shrink to a 14x14x32 waist; device x100),
* ``encoder`` (a 4-layer transformer encoder, 128 tokens, whose middle cuts are
  sets: hidden state + mask bias, plus shape scalars; device x10).

Each model is profiled once; the link is then switched under it. For each link
it records the cut the planner chooses (single-tensor cuts measured, the
min-cut over per-node costs added), the measured latency of the cuts (brute
force over every cut predicted within 4x of the best, plus all-local and
all-cloud: all of vgg_small's 21 cuts that could matter; of the encoder's 131
prefix cuts, the 12 best predicted and every 24th, since a sweep at 1 Mbit/s
takes seconds a cut), the chosen cut over the best measured (target <= 1.10;
the two measured again interleaved call by call, as the digits part does),
the best middle cut over the better of all-local and all-cloud, and pipelined
frames/s (``SplitModel.stream``, 3 in flight) over one at a time at the best
middle cut (and at the chosen cut when it is another middle one; target >=
1.5x where head and link+tail are both significant, i.e. each at least a third
of the frame: with shares of 70% and 30%, 1/0.7 = 1.43x is the most overlap gives). Writes ``bench/results/split_graph.json`` and a
plot per model, ``split_<model>.png`` (latency by cut and link).

    python bench/split.py                 # about 2 minutes on 2 cores
    python bench/split.py --quick         # fewer repeats
    python bench/split.py --part graph    # the min-cut planner, about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.split import BackgroundServer, EmulatedLink, SplitClient, SplitModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "split"))
import build_models  # noqa: E402
import digits_data  # noqa: E402
from _results import RESULTS  # noqa: E402

from edgecloud.split import CutProfile, PowerModel, predict  # noqa: E402

MODEL = ROOT / "examples" / "split" / "models" / "digits_cnn.onnx"
LINKS_MBIT = (1.0, 10.0, 100.0)
RTT_S = 0.020


def _median_latency(model: SplitModel, frames: np.ndarray, cut: int | None) -> float:
    times = []
    for x in frames:
        model.run({"input": x[None]}, cut=cut)
        assert model.last is not None
        assert not model.last.fallback, "the cloud failed during the benchmark"
        times.append(model.last.latency_s)
    return statistics.median(times)


def bench_link(
    address: str,
    mbit: float,
    frames: np.ndarray,
    repeats: int,
    slowdown: float,
    encoding: str,
    compression: str = "none",
) -> dict[str, Any]:
    link = EmulatedLink(bandwidth_bps=mbit * 1e6, rtt_s=RTT_S)
    client = SplitClient(address, link=link)
    with SplitModel(MODEL, client, device_slowdown=slowdown, encoding=encoding,  # type: ignore[arg-type]
                    compression=compression) as model:  # type: ignore[arg-type]  # fmt: skip
        model.profile({"input": frames[0][None]}, repeats=5)
        best_pred, predictions = model.choose()
        measured = []
        for cut in model.cuts:
            n = repeats if cut.index in (0, len(model.cuts) - 1) else max(3, repeats // 2)
            measured.append(_median_latency(model, frames[:n], cut.index))
        best = int(np.argmin(measured))
        # Auto-chosen calls vs the best cut, interleaved call by call so both see the
        # same load on this shared host (medians taken minutes apart differ by 20%).
        auto_t, best_t = [], []
        for i, x in enumerate(frames[: 3 * repeats]):
            for auto_first in (True, False) if i % 2 else (False, True):
                # alternate which goes first, so neither always follows the other
                model.run({"input": x[None]}, cut=None if auto_first else best)
                assert model.last is not None and not model.last.fallback
                (auto_t if auto_first else best_t).append(model.last.latency_s)
        auto, best_paired = statistics.median(auto_t), statistics.median(best_t)
        chosen_after = model.choose()[0].profile.cut
        est = model.link.estimate
    chosen = best_pred.profile.cut.index
    local, cloud = measured[-1], measured[0]
    return {
        "link_mbit": mbit,
        "rtt_ms": RTT_S * 1e3,
        "estimated_rtt_ms": est.rtt_s * 1e3,
        "estimated_mbit": est.bandwidth_Bps * 8 / 1e6,
        "chosen_cut": chosen,
        "chosen_cut_name": best_pred.profile.cut.name,
        "chosen_cut_after_runs": chosen_after.index,
        "best_cut": best,
        "best_cut_name": model.cuts[best].name,
        "chosen_measured_ms": measured[chosen] * 1e3,
        "auto_run_ms": auto * 1e3,
        "best_interleaved_ms": best_paired * 1e3,
        "best_measured_ms": measured[best] * 1e3,
        "all_local_ms": local * 1e3,
        "all_cloud_ms": cloud * 1e3,
        "chosen_over_best": measured[chosen] / measured[best],
        "auto_over_best_interleaved": auto / best_paired,
        "best_fixed_over_chosen": min(local, cloud) / measured[chosen],
        "per_cut": [
            {
                "index": c.profile.cut.index,
                "cut": c.profile.cut.name,
                "head_ms": c.profile.head_s * 1e3,
                "tail_ms": c.profile.tail_s * 1e3,
                "up_bytes": c.profile.up_bytes,
                "predicted_ms": c.latency_s * 1e3,
                "measured_ms": m * 1e3,
            }
            for c, m in zip(predictions, measured, strict=True)
        ],
    }


def link_change(
    address: str, frames: np.ndarray, slowdown: float, encoding: str, compression: str
) -> dict[str, Any]:
    """One running model while the link goes 100 -> 1 -> 100 Mbit/s: calls until it re-chooses."""
    client = SplitClient(address, link=EmulatedLink(100e6, RTT_S))
    phases = []
    with SplitModel(MODEL, client, device_slowdown=slowdown, encoding=encoding,  # type: ignore[arg-type]
                    compression=compression, probe_interval_s=0.5) as model:  # type: ignore[arg-type]  # fmt: skip
        model.profile({"input": frames[0][None]}, repeats=3)
        for mbit in (100.0, 1.0, 100.0):
            client.set_link(EmulatedLink(mbit * 1e6, RTT_S))
            cuts, lat = [], []
            for x in frames[:12]:
                model.run({"input": x[None]})
                assert model.last is not None
                cuts.append(model.last.cut.index)
                lat.append(model.last.latency_s * 1e3)
                time.sleep(0.1)  # calls arrive at 10 Hz, like a camera
            phases.append({"link_mbit": mbit, "chosen_cuts": cuts, "latency_ms": lat,
                           "estimated_mbit_after": model.link.estimate.bandwidth_Bps * 8 / 1e6})  # fmt: skip
    return {"phases": phases}


def accuracy_per_cut(address: str, data: digits_data.Digits) -> dict[str, Any]:
    """Top-1 accuracy through head -> wire -> tail at every cut, per activation encoding."""
    client = SplitClient(address, chunk_bytes=256 * 1024)
    x, y = data.x_test, data.y_test
    with SplitModel(MODEL, client) as model:
        whole = np.concatenate([model.run({"input": x[i : i + 60]}, cut=-1)["logits"]
                                for i in range(0, len(x), 60)])  # fmt: skip
        base = float((whole.argmax(1) == y).mean())
        out: dict[str, Any] = {"fp32_whole_model": base, "cuts": []}
        for cut in model.cuts[:-1]:
            row: dict[str, Any] = {"index": cut.index, "cut": cut.name}
            for enc in ("float32", "float16", "int8"):
                logits, sent = [], 0
                for i in range(0, len(x), 60):
                    acts = model.run_head(cut, {"input": x[i : i + 60]})
                    r = client.run_tail(
                        model.name, cut.tensors, acts, encoding=enc,  # type: ignore[arg-type]
                        compression="zstd" if enc == "int8" else "none",
                    )  # fmt: skip
                    logits.append(r.outputs["logits"])
                    sent += r.up_bytes
                row[enc] = float((np.concatenate(logits).argmax(1) == y).mean())
                # bytes per image on the wire (int8 is zstd-compressed)
                row[f"{enc}_bytes_per_image"] = sent / len(x)
            out["cuts"].append(row)
    out["int8_zstd_vs_float32_bytes"] = sum(r["int8_bytes_per_image"] for r in out["cuts"]) / sum(
        r["float32_bytes_per_image"] for r in out["cuts"]
    )
    out["int8_max_loss_points"] = max((base - r["int8"]) * 100 for r in out["cuts"])
    out["float16_max_loss_points"] = max((base - r["float16"]) * 100 for r in out["cuts"])
    out["float32_max_loss_points"] = max((base - r["float32"]) * 100 for r in out["cuts"])
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for r, color in zip(results, ("tab:red", "tab:orange", "tab:green"), strict=False):
        idx = [c["index"] for c in r["per_cut"]]
        ax.plot(idx, [c["measured_ms"] for c in r["per_cut"]], "o-", color=color,
                label=f"{r['link_mbit']:g} Mbit/s measured")  # fmt: skip
        ax.plot(idx, [c["predicted_ms"] for c in r["per_cut"]], "x--", color=color, alpha=0.6,
                label=f"{r['link_mbit']:g} Mbit/s predicted")  # fmt: skip
        ax.plot([r["chosen_cut"]], [r["chosen_measured_ms"]], "*", ms=18, color=color, mec="k")
    ax.set_yscale("log")
    ax.set_xlabel("cut (0 = all-cloud, last = all-device); star = chosen")
    ax.set_ylabel("end-to-end latency, ms (log)")
    ax.set_title("digits CNN split latency per cut, 20 ms RTT")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


GRAPH_MODELS = {"vgg_small": 100.0, "encoder": 10.0}  # name: device slowdown
# Profile repeats: the emulated device fixes a head's time after its first 6 calls;
# the encoder's 4 single-tensor cuts are cheap to profile that long, vgg_small's 21
# (up to 0.4 s a call) are not.
PROFILE_REPEATS = {"vgg_small": 2, "encoder": 5}


def _graph_sample(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "vgg_small":
        return {"input": rng.random((1, 3, 224, 224)).astype(np.float32)}
    mask = np.ones((1, 128), np.int64)
    mask[0, 100:] = 0
    return {"input_ids": rng.integers(0, 4096, (1, 128)).astype(np.int64), "attention_mask": mask}


def _graph_model_path(name: str) -> Path:
    path = ROOT / "examples" / "split" / "models" / f"{name}.onnx"
    if not path.exists():
        (build_models.export_vgg if name == "vgg_small" else build_models.export_encoder)(path)
    return path


def _measure(model: SplitModel, frames: list[dict[str, np.ndarray]], cut: int | None, n: int,
             warm: bool = True) -> float:  # fmt: skip
    if warm:
        model.run(frames[0], cut=cut)
    times = []
    for i in range(n):
        model.run(frames[i % len(frames)], cut=cut)
        assert model.last is not None and not model.last.fallback, "the cloud failed"
        times.append(model.last.latency_s)
    return statistics.median(times)


def _throughput(model: SplitModel, frames: list[dict[str, np.ndarray]], cut: int,
                expected_s: float) -> dict[str, Any]:  # fmt: skip
    n = int(min(8, max(4, 3.0 / max(expected_s, 1e-3))))  # about 3 s a side
    batch = [frames[i % len(frames)] for i in range(n)]
    model.run(batch[0], cut=cut)
    t0 = time.perf_counter()
    for f in batch:
        model.run(f, cut=cut)
    one = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    done = sum(1 for _ in model.stream(batch, cut=cut, max_in_flight=3))
    piped = done / (time.perf_counter() - t0)
    return {"cut_index": cut, "frames": n, "one_at_a_time_fps": one, "pipelined_fps": piped,
            "speedup": piped / one}  # fmt: skip


def bench_graph_model(address: str, name: str, quick: bool) -> list[dict[str, Any]]:
    """One profiled model, the link switched under it: 1, 10, 100 Mbit/s."""
    frames = [_graph_sample(name, i) for i in range(4)]
    client = SplitClient(address, link=EmulatedLink(10e6, RTT_S))
    with SplitModel(_graph_model_path(name), client, name=name,
                    device_slowdown=GRAPH_MODELS[name]) as model:  # fmt: skip
        t0 = time.perf_counter()
        model.profile(frames[0], repeats=PROFILE_REPEATS[name])
        print(f"{name} profiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = []
        for mbit in LINKS_MBIT:
            client.set_link(EmulatedLink(mbit * 1e6, RTT_S))
            for _ in range(2):
                model.probe_link()
            t0 = time.perf_counter()
            rows.append(_graph_link(model, frames, mbit, quick))
            print(f"{name} at {mbit:g} Mbit/s: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return rows


def _graph_link(model: SplitModel, frames: list[dict[str, np.ndarray]], mbit: float,
                quick: bool) -> dict[str, Any]:  # fmt: skip
    best_pred, _ = model.choose()
    chosen = best_pred.profile.cut
    link = model.link.estimate
    measured_profiles = {p.cut.tensors: p for p in model.profiles}
    cuts = model.cuts
    last = len(cuts) - 1
    preds: list[CutProfile] = [
        measured_profiles.get(c.tensors) or model.graph_profile(c) for c in cuts
    ]
    pred_ms = [predict(p, link, PowerModel()).latency_s * 1e3 for p in preds]
    # Brute force over every cut predicted within 4x of the best (all of them on small
    # graphs, up to the 12 best predicted plus every 24th on large ones), and the two
    # trivial cuts; a cut predicted 4x slower is left out (seconds per call at 1 Mbit/s)
    floor = min(pred_ms)
    near = [i for i in range(len(cuts)) if pred_ms[i] <= 4 * floor]
    if len(cuts) <= 40:
        wanted = {0, last, *near}
    else:
        ranked = sorted(near, key=lambda i: pred_ms[i])
        wanted = {0, last, *ranked[:12], *(i for i in near if i % 24 == 0)}
    # and the two best predicted middle cuts, however slow: the middle-vs-trivial figure
    wanted.update(sorted(range(1, last), key=lambda i: pred_ms[i])[:2])
    chosen_i = next((i for i, c in enumerate(cuts) if set(c.tensors) == set(chosen.tensors)),
                    None)  # fmt: skip
    if chosen_i is not None:
        wanted.add(chosen_i)
    reps = 2 if quick else 3
    measured: dict[int, float] = {}
    for i in sorted(wanted):
        close = pred_ms[i] <= 3 * floor
        measured[i] = _measure(model, frames, i, reps if close else 1, warm=close) * 1e3
    if chosen_i is not None:
        chosen_ms = measured[chosen_i]
    else:  # a min-cut partition that is no prefix cut: measured as chosen
        chosen_ms = _measure(model, frames, None, reps) * 1e3
    best_i = min(measured, key=lambda i: measured[i])
    # chosen vs best, interleaved call by call: on a shared host two medians taken a
    # minute apart differ by 10-20%, as much as near-equal cuts differ from each other
    paired = 1.0
    if chosen_i != best_i:
        pair: dict[bool, list[float]] = {True: [], False: []}
        for k in range(4 * reps):
            first = k % 2 == 0
            for is_chosen in (first, not first):
                model.run(frames[k % len(frames)], cut=chosen_i if is_chosen else best_i)
                assert model.last is not None and not model.last.fallback
                pair[is_chosen].append(model.last.latency_s)
        paired = statistics.median(pair[True]) / statistics.median(pair[False])
    middle = {i: v for i, v in measured.items() if i not in (0, last)}
    best_mid = min(middle, key=lambda i: middle[i])
    fixed = min(measured[0], measured[last])
    pipe_mid = _throughput(model, frames, best_mid, middle[best_mid] / 1e3)
    pipe_chosen = None
    if chosen_i is not None and chosen_i not in (last, best_mid):
        pipe_chosen = _throughput(model, frames, chosen_i, chosen_ms / 1e3)
    mid_pred = preds[best_mid]
    link_s = predict(mid_pred, link, PowerModel()).latency_s - mid_pred.head_s
    significant = min(mid_pred.head_s, link_s) / (mid_pred.head_s + link_s) >= 1 / 3
    return {
        "link_mbit": mbit,
        "estimated_mbit": link.bandwidth_Bps * 8 / 1e6,
        "estimated_rtt_ms": link.rtt_s * 1e3,
        "cuts": len(cuts),
        "measured_cuts": len(measured),
        "chosen_cut": chosen.name,
        "chosen_cut_tensors": len(chosen.tensors),
        "chosen_index": chosen_i,
        "chosen_predicted_ms": best_pred.latency_s * 1e3,
        "chosen_measured_ms": chosen_ms,
        "best_index": best_i,
        "best_cut": cuts[best_i].name,
        "best_measured_ms": measured[best_i],
        "chosen_over_best_sweep": chosen_ms / measured[best_i],
        "chosen_over_best": paired,
        "all_local_ms": measured[last],
        "all_cloud_ms": measured[0],
        "best_middle_index": best_mid,
        "best_middle_cut": cuts[best_mid].name,
        "best_middle_ms": middle[best_mid],
        "best_middle_over_best_fixed": middle[best_mid] / fixed,
        "pipeline_chosen": pipe_chosen,
        "pipeline_best_middle": pipe_mid,
        "head_and_link_both_significant_at_best_middle": significant,
        "per_cut": [
            {
                "index": i,
                "cut": cuts[i].name,
                "tensors": len(cuts[i].tensors),
                "head_ms": preds[i].head_s * 1e3,
                "tail_ms": preds[i].tail_s * 1e3,
                "up_bytes": preds[i].up_bytes,
                "predicted_ms": pred_ms[i],
                "measured_ms": measured.get(i),
            }
            for i in range(len(cuts))
        ],
    }


def plot_graph(name: str, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for r, color in zip(rows, ("tab:red", "tab:orange", "tab:green"), strict=False):
        idx = [c["index"] for c in r["per_cut"]]
        ax.plot(idx, [c["predicted_ms"] for c in r["per_cut"]], "-", color=color, alpha=0.5,
                label=f"{r['link_mbit']:g} Mbit/s predicted")  # fmt: skip
        m = [(c["index"], c["measured_ms"]) for c in r["per_cut"] if c["measured_ms"] is not None]
        ax.plot([i for i, _ in m], [v for _, v in m], "o", color=color, ms=4,
                label=f"{r['link_mbit']:g} Mbit/s measured")  # fmt: skip
        if r["chosen_index"] is not None:
            ax.plot([r["chosen_index"]], [r["chosen_measured_ms"]], "*", ms=16, color=color,
                    mec="k")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("cut (prefix of the topological order: 0 = all-cloud, last = all-device); "
                  "star = chosen")  # fmt: skip
    ax.set_ylabel("end-to-end latency, ms (log)")
    ax.set_title(f"{name}: latency by cut and link, 20 ms RTT, device x{GRAPH_MODELS[name]:g}")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main_graph(quick: bool) -> None:
    t0 = time.perf_counter()
    paths = {n: _graph_model_path(n) for n in GRAPH_MODELS}
    out: dict[str, Any] = {
        "benchmark": "split_graph", "rtt_ms": RTT_S * 1e3, "encoding": "float16",
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "models": {},
    }  # fmt: skip
    with BackgroundServer(paths, threads=1) as srv:
        for name in GRAPH_MODELS:
            rows = bench_graph_model(srv.address, name, quick)
            out["models"][name] = {"device_slowdown": GRAPH_MODELS[name], "links": rows}
            plot_graph(name, rows, RESULTS / f"split_{name}.png")
    every = [r for m in out["models"].values() for r in m["links"]]
    vgg = out["models"]["vgg_small"]["links"]
    both = [(n, r) for n, m in out["models"].items() for r in m["links"]
            if r["head_and_link_both_significant_at_best_middle"]]  # fmt: skip
    out["figures"] = {
        "chosen_within_10pct_of_best_at_every_link": all(
            r["chosen_over_best"] <= 1.10 for r in every
        ),
        "worst_chosen_over_best": max(r["chosen_over_best"] for r in every),
        "vgg_small_middle_cut_wins_at_mbit": [
            r["link_mbit"] for r in vgg if r["best_middle_over_best_fixed"] < 0.9
        ],
        "pipelined_speedup_where_both_significant": [
            (n, r["link_mbit"], round(r["pipeline_best_middle"]["speedup"], 2)) for n, r in both
        ],
    }
    out["elapsed_s"] = time.perf_counter() - t0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "split_graph.json").write_text(json.dumps(out, indent=2) + "\n")
    hdr = ("model", "link", "chosen", "ms", "best", "ms", "ch/best", "local", "cloud",
           "best mid", "mid/fixed", "pipe x")  # fmt: skip
    print(" | ".join(f"{h:>9}" for h in hdr))
    for name, m in out["models"].items():
        for r in m["links"]:
            row = (name[:9], f"{r['link_mbit']:g}M", r["chosen_index"],
                   f"{r['chosen_measured_ms']:.0f}", r["best_index"], f"{r['best_measured_ms']:.0f}",
                   f"{r['chosen_over_best']:.3f}", f"{r['all_local_ms']:.0f}",
                   f"{r['all_cloud_ms']:.0f}", f"{r['best_middle_ms']:.0f}",
                   f"{r['best_middle_over_best_fixed']:.2f}",
                   f"{r['pipeline_best_middle']['speedup']:.2f}")  # fmt: skip
            print(" | ".join(f"{v!s:>9}" for v in row))
    print(json.dumps(out["figures"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device-slowdown", type=float, default=100.0)
    parser.add_argument("--encoding", default="float16", choices=["float32", "float16", "int8"])
    parser.add_argument("--compression", default="none", choices=["none", "zstd"])
    parser.add_argument("--tag", default="", help="write split_<tag>.json/png instead")
    parser.add_argument("--part", default="digits", choices=["digits", "graph"],
                        help="digits: the digits CNN (split.json); graph: the min-cut planner "
                             "on vgg_small and encoder (split_graph.json)")  # fmt: skip
    args = parser.parse_args()
    if args.part == "graph":
        main_graph(args.quick)
        return
    repeats = 5 if args.quick else 11
    data = digits_data.load()
    t0 = time.perf_counter()
    with BackgroundServer({"digits_cnn": MODEL}, threads=1) as srv:
        accuracy = accuracy_per_cut(srv.address, data)
        links = [
            bench_link(
                srv.address,
                mbit,
                data.x_test,
                repeats,
                args.device_slowdown,
                args.encoding,
                args.compression,
            )
            for mbit in LINKS_MBIT
        ]
        change = link_change(
            srv.address, data.x_test, args.device_slowdown, args.encoding, args.compression
        )
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": "split",
        "model": str(MODEL.relative_to(ROOT)),
        "device_slowdown": args.device_slowdown,
        "encoding": args.encoding,
        "compression": args.compression,
        "repeats": repeats,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "links": links,
        "accuracy": accuracy,
        "link_change": change,
        "figures": {
            "chosen_within_10pct_of_best_at_every_link": all(
                r["chosen_over_best"] <= 1.10 for r in links
            ),
            "auto_within_10pct_of_best_interleaved_at_every_link": all(
                r["auto_over_best_interleaved"] <= 1.10 for r in links
            ),
            "int8_loss_at_most_0.5_points": accuracy["int8_max_loss_points"] <= 0.5,
        },
        "elapsed_s": time.perf_counter() - t0,
    }
    name = f"split_{args.tag}" if args.tag else "split"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(links, RESULTS / f"{name}.png")

    print(f"digits CNN, device slowdown x{args.device_slowdown:g}, {args.encoding} activations "
          f"({args.compression}), "
          f"RTT {RTT_S * 1e3:.0f} ms")  # fmt: skip
    hdr = ("link", "chosen", "best", "chosen ms", "best ms", "local ms", "cloud ms",
           "chosen/best", "auto/best*")  # fmt: skip
    print(" | ".join(f"{h:>11}" for h in hdr))
    for r in links:
        row = (f"{r['link_mbit']:g} Mbit", r["chosen_cut"], r["best_cut"],
               f"{r['chosen_measured_ms']:.1f}", f"{r['best_measured_ms']:.1f}",
               f"{r['all_local_ms']:.1f}", f"{r['all_cloud_ms']:.1f}",
               f"{r['chosen_over_best']:.3f}", f"{r['auto_over_best_interleaved']:.3f}")  # fmt: skip
        print(" | ".join(f"{v!s:>11}" for v in row))
    print(f"accuracy (whole model fp32): {accuracy['fp32_whole_model']:.4f}; worst loss over "
          f"cuts: int8 {accuracy['int8_max_loss_points']:.2f} pt, float16 "
          f"{accuracy['float16_max_loss_points']:.2f} pt, float32 "
          f"{accuracy['float32_max_loss_points']:.2f} pt; int8+zstd sends "
          f"{accuracy['int8_zstd_vs_float32_bytes']:.1%} of float32's bytes over all cuts")  # fmt: skip
    print("* auto/best: calls that choose their own cut vs the best cut, interleaved call by call")
    for p in change["phases"]:
        print(f"link now {p['link_mbit']:g} Mbit/s: chosen cut per call {p['chosen_cuts']}")
    print(json.dumps(result["figures"]))


if __name__ == "__main__":
    main()
