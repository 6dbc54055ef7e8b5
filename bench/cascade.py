"""Confidence-cascade benchmark: accuracy vs escalation rate, device CNN -> cloud CNN.

The device runs the small digits CNN on every input and escalates those whose
top-1 softmax margin is under a threshold to the larger cloud CNN, served by
the split service over real gRPC on 127.0.0.1 (KServe v2 is the same model
server; the cascade uses the whole-model tail, cut 0). The threshold is
calibrated on the calibration split to the lowest escalation rate whose
accuracy reaches 99% of the cloud model's; the figures are then measured on the
untouched test split. Two calibrations: the plain one (lowest rate meeting the
target on the calibration set) and a conservative one (the target must hold
in 95% of bootstrap resamples of the calibration set). In the same run: device-only and cloud-only accuracy (the
two strategies without a cascade) and, for contrast, a random-escalation
baseline at the same rate.

Writes ``bench/results/cascade.json`` and ``bench/results/cascade.png`` and
prints a table.

    python bench/cascade.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.split import BackgroundServer, Cascade, SplitClient, SplitModel, margins

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "split"))
import digits_data  # noqa: E402
from _results import RESULTS  # noqa: E402

MODELS = ROOT / "examples" / "split" / "models"
DEVICE = MODELS / "digits_cnn.onnx"
CLOUD = MODELS / "digits_cloud.onnx"
TARGET = 0.99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    data = digits_data.load()
    t0 = time.perf_counter()
    with BackgroundServer({"digits_cloud": CLOUD}, threads=1) as srv:
        cloud_client = SplitClient(srv.address)
        cloud_model = SplitModel(CLOUD, cloud_client, name="digits_cloud")
        device = SplitModel(DEVICE)

        def dev(x: np.ndarray) -> np.ndarray:
            return np.concatenate([device.run({"input": x[i : i + 60]})["logits"]
                                   for i in range(0, len(x), 60)])  # fmt: skip

        calls = {"n": 0, "rows": 0}

        def cloud(x: np.ndarray) -> np.ndarray:
            out = []
            for i in range(0, len(x), 60):
                calls["n"] += 1
                calls["rows"] += len(x[i : i + 60])
                out.append(cloud_model.run({"input": x[i : i + 60]}, cut=0)["logits"])
            return np.concatenate(out)

        # calibration: logits of both models on the calibration split
        d_cal, c_cal = dev(data.x_calib), cloud(data.x_calib)
        point = Cascade.calibrate(d_cal, c_cal, data.y_calib, target=TARGET)
        safe = Cascade.calibrate(d_cal, c_cal, data.y_calib, target=TARGET, bootstrap=2000)
        # test: the full curve (precomputed logits) and one real cascade run at the threshold
        d_test, c_test = dev(data.x_test), cloud(data.x_test)
        curve = Cascade.curve(d_test, c_test, data.y_test)
        # the plain calibration, then the conservative one, each run for real over gRPC
        pred_plain, esc_plain = Cascade(dev, cloud, threshold=point.threshold).predict(data.x_test)
        calls.update(n=0, rows=0)
        cascade = Cascade(dev, cloud, threshold=safe.threshold)
        t1 = time.perf_counter()
        pred, escalated = cascade.predict(data.x_test)
        cascade_s = time.perf_counter() - t1
        cloud_model.close()
        device.close()
    y = data.y_test
    device_acc = float((d_test.argmax(1) == y).mean())
    cloud_acc = float((c_test.argmax(1) == y).mean())
    cascade_acc = float((pred == y).mean())
    rate = float(escalated.mean())
    # random escalation at the same rate, averaged over seeds
    rng = np.random.default_rng(0)
    rand = []
    for _ in range(200):
        esc = rng.random(len(y)) < rate
        rand.append(float(np.where(esc, c_test.argmax(1) == y, d_test.argmax(1) == y).mean()))
    # lowest escalation on the test curve itself that reaches 99% of the cloud (oracle view)
    goal = TARGET * cloud_acc
    oracle = min((p for p in curve if p.accuracy >= goal), key=lambda p: p.escalation_rate)
    result: dict[str, Any] = {
        "benchmark": "cascade",
        "device_model": str(DEVICE.relative_to(ROOT)),
        "cloud_model": str(CLOUD.relative_to(ROOT)),
        "target_fraction_of_cloud_accuracy": TARGET,
        "calibrated_threshold": safe.threshold,
        "calibration": {
            "method": "bootstrap (2000 resamples): target met in 95% of resamples",
            "escalation_rate": safe.escalation_rate,
            "accuracy": safe.accuracy,
        },
        "plain_calibration": {
            "threshold": point.threshold,
            "calibration_escalation_rate": point.escalation_rate,
            "test_escalation_rate": float(esc_plain.mean()),
            "test_accuracy": float((pred_plain == data.y_test).mean()),
            "test_over_cloud_accuracy": float((pred_plain == data.y_test).mean())
            / float((c_test.argmax(1) == data.y_test).mean()),
        },
        "test": {
            "n": len(y),
            "device_only_accuracy": device_acc,
            "cloud_only_accuracy": cloud_acc,
            "cascade_accuracy": cascade_acc,
            "escalation_rate": rate,
            "cascade_over_cloud_accuracy": cascade_acc / cloud_acc,
            "random_escalation_accuracy_same_rate": float(np.mean(rand)),
            "cloud_rows_sent": calls["rows"],
            "cascade_wall_s": cascade_s,
            "lowest_rate_reaching_target_on_test_curve": oracle.escalation_rate,
        },
        "curve": [
            {
                "threshold": p.threshold if np.isfinite(p.threshold) else None,
                "escalation_rate": p.escalation_rate,
                "accuracy": p.accuracy,
            }
            for p in curve
        ],
        "margin_quantiles": np.quantile(margins(d_test), [0.1, 0.25, 0.5]).tolist(),
        "elapsed_s": time.perf_counter() - t0,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cascade.json").write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p.escalation_rate for p in curve], [p.accuracy for p in curve], "-",
            label="margin cascade (test)")  # fmt: skip
    ax.plot([0, 1], [device_acc, cloud_acc], ":", color="grey", label="random escalation")
    ax.axhline(goal, color="tab:red", lw=0.8, ls="--", label=f"{TARGET:.0%} of cloud accuracy")
    ax.plot([rate], [cascade_acc], "*", ms=14, color="tab:red", label="calibrated threshold")
    ax.set_xlabel("escalation rate (fraction of inputs sent to the cloud)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("digits: device CNN -> cloud CNN confidence cascade")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "cascade.png", dpi=120)

    t = result["test"]
    print(f"{'strategy':<34} {'accuracy':>9} {'escalated':>10}")
    print(f"{'device only':<34} {device_acc:>9.4f} {0.0:>10.3f}")
    print(f"{'cloud only':<34} {cloud_acc:>9.4f} {1.0:>10.3f}")
    print(f"{'random escalation (same rate)':<34} {t['random_escalation_accuracy_same_rate']:>9.4f} "
          f"{rate:>10.3f}")  # fmt: skip
    pc = result["plain_calibration"]
    print(f"{'margin cascade (plain calibration)':<34} {pc['test_accuracy']:>9.4f} "
          f"{pc['test_escalation_rate']:>10.3f}")  # fmt: skip
    print(f"{'margin cascade (bootstrap calib.)':<34} {cascade_acc:>9.4f} {rate:>10.3f}")
    print(f"cascade / cloud accuracy = {t['cascade_over_cloud_accuracy']:.4f} (target {TARGET}); "
          f"threshold {safe.threshold:.4f} (bootstrap) calibrated on {len(data.y_calib)} held-out images; "
          f"lowest rate reaching the target on the test curve: {oracle.escalation_rate:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
