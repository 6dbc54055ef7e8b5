"""Router evaluation: which signal predicts a wrong local answer, and what escalating buys.

On the held-out set ``bench/data/router_eval.jsonl`` (general questions of graded
difficulty, and questions about a fictional robot fleet that only the cloud's
knowledge base covers), with few-shot Q/A prompts, greedy, one line:

1. the device answers every question locally, keeping per-token logprob/entropy;
2. the cloud (the real service, in this process, with the fleet manual as its
   knowledge base) answers every question;
3. for each signal (mean logprob, min logprob, min window-mean logprob, mean entropy,
   and the learned router: MiniLM embedding + logistic head, 5-fold cross-validated)
   the AUROC at predicting a wrong local answer, and the accuracy when the top-scored
   fraction of questions is escalated (escalated ones scored by the cloud's answer).

    python bench/router_eval.py [--limit N] [--concurrency 8]

Prints a table; writes bench/results/router_eval.json and router_eval.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import local_cloud
from _results import RESULTS
from knowledge_eval import ask, few_shot_prompt, is_right

ROOT = Path(__file__).parents[1]
DATA = ROOT / "bench" / "data" / "router_eval.jsonl"
MANUAL = ROOT / "bench" / "data" / "fleet_manual"
WINDOW = 4


def local_answers(rows: list[dict[str, Any]], max_tokens: int) -> list[dict[str, Any]]:
    from edgecloud import Client
    from edgecloud.router import window_extremes

    out = []
    with Client.local(n_threads=2) as client:
        for row in rows:
            stream = client.stream(
                few_shot_prompt(row["question"]), max_tokens=max_tokens, stop=["\n"]
            )
            chunks = [c for c in stream if c.token_id >= 0]
            r = stream.result
            assert r is not None
            lps = [c.logprob for c in chunks] or [0.0]
            ents = [c.entropy for c in chunks] or [0.0]
            low, _ = window_extremes(lps, ents, WINDOW)
            out.append({
                "text": r.text.strip(), "right": is_right(r.text, row["answers"]),
                "mean_logprob": sum(lps) / len(lps), "min_logprob": min(lps),
                "min_window_logprob": low if math.isfinite(low) else min(lps),
                "mean_entropy": sum(ents) / len(ents),
            })  # fmt: skip
    return out


async def cloud_answers(rows: list[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    from edgecloud.transport import CloudClient

    async with (
        local_cloud(knowledge=MANUAL) as (server, _backend, _config),
        CloudClient(f"127.0.0.1:{server.port}", tls=False, timeout_s=900) as client,
    ):
        sem = asyncio.Semaphore(concurrency)

        async def one(row: dict[str, Any]) -> dict[str, Any]:
            async with sem:
                text, _, _ = await ask(client, row["question"], skip=False)
            return {"text": text.strip(), "right": is_right(text, row["answers"])}

        return list(await asyncio.gather(*(one(r) for r in rows)))


def learned_scores(rows: list[dict[str, Any]], wrong: list[bool], folds: int = 5) -> list[float]:
    """Out-of-fold p(poor) from the learned router on MiniLM embeddings of the question."""
    from edgecloud.common.encoder import SentenceEncoder
    from edgecloud.router import LearnedRouter

    x = SentenceEncoder().encode([r["question"] for r in rows])
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    scores = [0.0] * len(rows)
    for k in range(folds):
        test = set(order[k::folds])
        train = [i for i in order if i not in test]
        head = LearnedRouter.fit(x[train], [wrong[i] for i in train])
        for i in test:
            scores[i] = float(head.predict(x[i])[()])
    return scores


def curve(
    scores: list[float], local_right: list[bool], cloud_right: list[bool]
) -> list[tuple[float, float]]:
    """(escalation rate, accuracy) when the highest-scored questions go to the cloud."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    right = sum(local_right)
    points = [(0.0, right / len(scores))]
    for k, i in enumerate(order, start=1):
        right += cloud_right[i] - local_right[i]
        points.append((k / len(scores), right / len(scores)))
    return points


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--limit", type=int, default=0, help="first N questions only (0 = all)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from edgecloud.router import auroc

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rows = rows[: args.limit or None]
    t0 = time.perf_counter()
    local = local_answers(rows, args.max_tokens)
    t_local = time.perf_counter() - t0
    cloud = asyncio.run(cloud_answers(rows, args.concurrency))
    t_cloud = time.perf_counter() - t0 - t_local
    wrong = [not r["right"] for r in local]
    local_right = [r["right"] for r in local]
    cloud_right = [r["right"] for r in cloud]
    signals = {
        "mean_logprob": [-r["mean_logprob"] for r in local],
        "min_logprob": [-r["min_logprob"] for r in local],
        "min_window_logprob": [-r["min_window_logprob"] for r in local],
        "mean_entropy": [r["mean_entropy"] for r in local],
        "learned_router": learned_scores(rows, wrong),
    }
    n = len(rows)
    cloud_acc = sum(cloud_right) / n
    oracle = sum(a or b for a, b in zip(local_right, cloud_right, strict=True)) / n
    result: dict[str, Any] = {
        "questions": n,
        "by_domain": {d: sum(r["domain"] == d for r in rows) for d in ("general", "fleet")},
        "local_accuracy": sum(local_right) / n,
        "cloud_accuracy": cloud_acc,
        "oracle_accuracy": oracle,
        "local_accuracy_by_domain": {},
        "cloud_accuracy_by_domain": {},
        "signals": {},
        "seconds": {"local": round(t_local, 1), "cloud": round(t_cloud, 1)},
    }
    for d in ("general", "fleet"):
        idx = [i for i, r in enumerate(rows) if r["domain"] == d]
        if idx:
            result["local_accuracy_by_domain"][d] = sum(local_right[i] for i in idx) / len(idx)
            result["cloud_accuracy_by_domain"][d] = sum(cloud_right[i] for i in idx) / len(idx)
    target = 0.95 * cloud_acc
    for name, scores in signals.items():
        pts = curve(scores, local_right, cloud_right)
        rate = next((r for r, acc in pts if acc >= target), None)
        result["signals"][name] = {
            "auroc": auroc(scores, wrong),
            "escalation_rate_for_95pct_of_cloud": rate,
            "curve": [(round(r, 4), round(a, 4)) for r, a in pts],
        }
    best = max(result["signals"], key=lambda k: result["signals"][k]["auroc"])
    result["best_signal"] = best
    result["per_question"] = [
        {"id": r["id"], "domain": r["domain"], "question": r["question"], "answers": r["answers"],
         "local": lo["text"], "local_right": lo["right"], "cloud": c["text"], "cloud_right": c["right"],
         **{k: round(v, 4) for k, v in lo.items() if k not in ("text", "right")}}
        for r, lo, c in zip(rows, local, cloud, strict=True)
    ]  # fmt: skip

    table = Table(title=f"router evaluation: {n} questions, local {result['local_accuracy']:.1%}, "
                        f"cloud {cloud_acc:.1%} (95% of it: {target:.1%})")  # fmt: skip
    for col in ("signal", "AUROC (wrong local answer)", "escalation rate for 95% of cloud"):
        table.add_column(col, justify="right")
    for name, s in result["signals"].items():
        rate = s["escalation_rate_for_95pct_of_cloud"]
        table.add_row(name, f"{s['auroc']:.3f}", "n/a" if rate is None else f"{rate:.1%}")
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "router_eval.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result, RESULTS / "router_eval.png")


def _plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in result["signals"].items():
        xs, ys = zip(*s["curve"], strict=True)
        ax.plot(xs, ys, label=f"{name} (AUROC {s['auroc']:.2f})")
    ax.axhline(result["cloud_accuracy"], color="k", ls="--", lw=1, label="all-cloud accuracy")
    ax.axhline(
        0.95 * result["cloud_accuracy"], color="grey", ls=":", lw=1, label="95% of all-cloud"
    )
    ax.plot(
        [0, 1],
        [result["local_accuracy"], result["cloud_accuracy"]],
        color="grey",
        lw=1,
        label="random",
    )
    ax.set_xlabel("escalation rate")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Escalating by each signal ({result['questions']} questions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
