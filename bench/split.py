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

    python bench/split.py                 # about 2 minutes on 2 cores
    python bench/split.py --quick         # fewer repeats
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
import digits_data  # noqa: E402

RESULTS = Path(__file__).parent / "results"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device-slowdown", type=float, default=100.0)
    parser.add_argument("--encoding", default="float16", choices=["float32", "float16", "int8"])
    parser.add_argument("--compression", default="none", choices=["none", "zstd"])
    parser.add_argument("--tag", default="", help="write split_<tag>.json/png instead")
    args = parser.parse_args()
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
