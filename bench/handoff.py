"""Hand-offs that lose nothing: escalated answers against asking the cloud directly.

On a fictional domain whose manual only the cloud has (its knowledge base), with the
device's router set as in bench/learning_loop.py (window 4, from the first token, 4
tokens held back, escalate below a mean logprob of -1.0) and few-shot prompts:

* **accuracy**: each question sent straight to the cloud, and through the device with
  the cloud verifying the device's partial answer (``device.cloud.verify_handoff``,
  the default) and without (the cloud continuing whatever the device wrote); escalated
  answers' accuracy against the same questions' direct accuracy (target >= 0.95x), and
  the hand-offs that kept part of the device's text counted separately;
* **hand-off gap**: with nothing held back, time from the last local token to the first
  cloud token the app receives, against the service's own time to first token for the
  same request (prompt, the device's text, verification) sent directly (target p50
  <= 1.2x);
* **speculative decoding** (``speculative=k``): the device drafts k tokens, the cloud
  verifies them in one forward pass and adds one; the answer must equal the cloud's own
  greedy answer on every prompt; acceptance rate and cloud passes per output token.

    python bench/handoff.py [--facts bench/data/fleet_facts.json --manual bench/data/fleet_manual]
                            [--questions 32] [--phrasing 1] [--dtype float32]

Prints a table; writes bench/results/handoff[-<domain>].json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import local_cloud
from _results import RESULTS
from knowledge_eval import few_shot_prompt, is_right

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
ROUTER = {"window": 4, "min_tokens": 1, "holdback_tokens": 4, "min_mean_logprob": -1.0}
MAX_TOKENS = 24


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def load_questions(facts: Path, n: int, phrasing: int) -> list[tuple[str, list[str]]]:
    rows = json.loads(facts.read_text())
    return [(r["phrasings"][phrasing % len(r["phrasings"])], r["answers"]) for r in rows[:n]]


async def direct_pass(target: str, questions: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    from edgecloud.transport import CloudClient
    from edgecloud.types import Chunk, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop=("\n",))
    out = []
    async with CloudClient(target, tls=False) as c:
        for q, answers in questions:
            text = "".join(
                [e.text async for e in c.stream(few_shot_prompt(q), params) if isinstance(e, Chunk)]
            )
            out.append({"question": q, "answer": text.strip(), "right": is_right(text, answers)})
    return out


def device_settings(target: str, *, verify: bool, **router: Any) -> Any:
    from edgecloud.config import Settings

    return Settings.load(device={
        "model": {"n_threads": 2},
        "cloud": {"endpoints": [{"target": target, "tls": False}], "health_interval_s": 3600,
                  "verify_handoff": verify},
        "router": {**ROUTER, **router}, "log": {"enabled": False},
    })  # fmt: skip


async def device_pass(
    target: str, questions: list[tuple[str, list[str]]], *, verify: bool
) -> list[dict[str, Any]]:
    from edgecloud import AsyncClient

    out = []
    async with await AsyncClient.open(settings=device_settings(target, verify=verify)) as client:
        for q, answers in questions:
            r = await client.generate(few_shot_prompt(q), max_tokens=MAX_TOKENS, stop="\n")
            route = r.route
            escalated = route is not None and route.escalated
            handoff = escalated and route is not None and route.policy == "confidence-window"
            sent = (route.local_tokens_before_handoff + route.rejected_local_tokens) if route else 0
            out.append({
                "question": q, "answer": r.text.strip(), "right": is_right(r.text, answers),
                "escalated": escalated, "source": r.source,
                "prefix_tokens_sent": sent if handoff else 0,
                "prefix_tokens_kept": route.local_tokens_before_handoff if handoff and route else 0,
                "retracted_chars": route.retracted_chars if route else 0,
            })  # fmt: skip
    return out


async def gap_pass(target: str, questions: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """Nothing held back and a window every answer trips, so each answer hands off."""
    from edgecloud import AsyncClient
    from edgecloud.transport import CloudClient
    from edgecloud.types import Chunk, SamplingParams

    gaps: list[float] = []
    own: list[float] = []
    settings = device_settings(
        target, verify=True, holdback_tokens=0, min_mean_logprob=-0.0001, min_tokens=2, window=2
    )
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop=("\n",))
    async with (
        await AsyncClient.open(settings=settings) as client,
        CloudClient(target, tls=False) as direct,
    ):
        for q, _ in questions:
            prompt = few_shot_prompt(q)
            times: list[tuple[str, float]] = []
            local_text = ""
            async for chunk in client.stream(prompt, max_tokens=MAX_TOKENS, stop="\n"):
                times.append((chunk.source, time.perf_counter()))
                if chunk.source == "local":
                    local_text += chunk.text
            local = [t for s, t in times if s == "local"]
            cloud = [t for s, t in times if s == "cloud"]
            if not local or not cloud:
                continue
            gaps.append(min(cloud) - max(local))
            t0 = time.perf_counter()
            events = direct.stream(prompt, params, assistant_prefix=local_text, verify_prefix=True)
            async for e in events:
                if isinstance(e, Chunk):
                    own.append(time.perf_counter() - t0)
                    break
            await events.aclose()  # type: ignore[attr-defined]
    ms = 1000.0
    gap50 = statistics.median(gaps) * ms if gaps else float("nan")
    own50 = statistics.median(own) * ms if own else float("nan")
    return {"n": len(gaps), "gap_ms": {"p50": gap50, "p90": _pct(gaps, 0.9) * ms},
            "own_ttft_ms": {"p50": own50, "p90": _pct(own, 0.9) * ms},
            "ratio_p50": gap50 / own50 if own else float("nan")}  # fmt: skip


async def speculative_pass(
    target: str, questions: list[tuple[str, list[str]]], k: int
) -> dict[str, Any]:
    from edgecloud import AsyncClient

    rows = []
    async with await AsyncClient.open(settings=device_settings(target, verify=True)) as client:
        for q, _ in questions:
            prompt = few_shot_prompt(q)
            alone = await client.generate(prompt, route="cloud", max_tokens=MAX_TOKENS, stop="\n")
            t = time.perf_counter()
            spec = await client.generate(
                prompt, route="cloud", max_tokens=MAX_TOKENS, stop="\n", speculative=k
            )
            dt = time.perf_counter() - t
            route = spec.route
            assert route is not None
            rows.append({
                "question": q, "identical": spec.text == alone.text, "cloud_alone": alone.text,
                "speculative": spec.text, "tokens": spec.usage.completion_tokens,
                "drafted": route.draft_tokens, "accepted": route.draft_accepted,
                "cloud_passes": route.cloud_passes, "seconds": dt,
            })  # fmt: skip
    drafted = sum(r["drafted"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    return {
        "k": k,
        "prompts": len(rows),
        "identical": sum(r["identical"] for r in rows),
        "acceptance_rate": sum(r["accepted"] for r in rows) / drafted if drafted else float("nan"),
        "cloud_passes_per_token": sum(r["cloud_passes"] for r in rows) / tokens if tokens else 0,
        "rows": rows,
    }


def summarize(direct: list[dict[str, Any]], device: list[dict[str, Any]]) -> dict[str, Any]:
    esc = [i for i, r in enumerate(device) if r["escalated"]]
    kept = [i for i in esc if device[i]["prefix_tokens_kept"] > 0]
    handed = [i for i in esc if device[i]["prefix_tokens_sent"] > 0]

    def acc(rows: list[dict[str, Any]], idx: list[int]) -> float:
        return sum(rows[i]["right"] for i in idx) / len(idx) if idx else float("nan")

    a_esc, a_dir = acc(device, esc), acc(direct, esc)
    return {
        "questions": len(device),
        "device_accuracy": acc(device, list(range(len(device)))),
        "escalated": len(esc),
        "escalated_accuracy": a_esc,
        "same_questions_direct_accuracy": a_dir,
        "ratio": a_esc / a_dir if a_dir else float("nan"),
        "handoffs_mid_answer": len(handed),
        "handoffs_mid_answer_right": sum(device[i]["right"] for i in handed),
        "handoffs_that_kept_a_prefix": len(kept),
        "handoffs_that_kept_a_prefix_right": sum(device[i]["right"] for i in kept),
        "handoffs_that_kept_a_prefix_direct_right": sum(direct[i]["right"] for i in kept),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    questions = load_questions(args.facts, args.questions, args.phrasing)
    async with local_cloud(knowledge=args.manual, threads=2, dtype=args.dtype) as (server, _, _):
        target = f"127.0.0.1:{server.port}"
        print(f"{len(questions)} questions; cloud on {target} ({args.dtype})", flush=True)
        direct = await direct_pass(target, questions)
        print(f"direct: {sum(r['right'] for r in direct)}/{len(direct)} right", flush=True)
        verified = await device_pass(target, questions, verify=True)
        print("device, verified hand-offs: done", flush=True)
        blind = await device_pass(target, questions, verify=False)
        print("device, blind hand-offs: done", flush=True)
        gap = await gap_pass(target, questions[: args.gap_questions])
        print(f"hand-off gap: {gap['gap_ms']['p50']:.0f} ms p50", flush=True)
        spec = await speculative_pass(target, questions[: args.spec_questions], args.k)
    return {
        "facts": str(args.facts.relative_to(ROOT)) if args.facts.is_relative_to(ROOT) else str(args.facts),
        "router": ROUTER,
        "dtype": args.dtype,
        "direct_accuracy": sum(r["right"] for r in direct) / len(direct),
        "verified": summarize(direct, verified),
        "blind": summarize(direct, blind),
        "handoff_gap": gap,
        "speculative": spec,
        "targets": {"escalated_over_direct": ">= 0.95", "gap_over_own_ttft_p50": "<= 1.2",
                    "speculative_identical": "all"},
        "rows": {"direct": direct, "verified": verified, "blind": blind},
    }  # fmt: skip


def print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"hand-offs on {out['facts']} (cloud {out['dtype']})")
    t.add_column("")
    for col in ("escalated", "right when escalated", "same questions direct", "ratio",
                "kept a prefix (right)"):  # fmt: skip
        t.add_column(col, justify="right")
    for name in ("verified", "blind"):
        s = out[name]
        t.add_row(name, str(s["escalated"]), f"{s['escalated_accuracy']:.1%}",
                  f"{s['same_questions_direct_accuracy']:.1%}", f"{s['ratio']:.2f}",
                  f"{s['handoffs_that_kept_a_prefix']} ({s['handoffs_that_kept_a_prefix_right']})")  # fmt: skip
    Console().print(t)
    g, sp = out["handoff_gap"], out["speculative"]
    print(f"direct accuracy, all questions: {out['direct_accuracy']:.1%}")
    print(f"hand-off gap p50 {g['gap_ms']['p50']:.0f} ms vs own TTFT {g['own_ttft_ms']['p50']:.0f} ms"
          f" ({g['ratio_p50']:.2f}x, n={g['n']})")  # fmt: skip
    print(f"speculative k={sp['k']}: identical {sp['identical']}/{sp['prompts']}, acceptance "
          f"{sp['acceptance_rate']:.1%}, cloud passes per token {sp['cloud_passes_per_token']:.2f}")  # fmt: skip


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["direct (same questions)", "verified hand-offs", "blind hand-offs"]
    v, b = out["verified"], out["blind"]
    vals = [v["same_questions_direct_accuracy"], v["escalated_accuracy"], b["escalated_accuracy"]]
    ax.bar(names, [x * 100 for x in vals], color=["#888", "#2a7", "#c44"])
    ax.set_ylabel("escalated answers right (%)")
    ax.set_title(f"{out['facts']}: escalated answers, {v['escalated']} of {v['questions']}")
    for i, x in enumerate(vals):
        ax.text(i, x * 100 + 1, f"{x:.0%}", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--facts", type=Path, default=DATA / "fleet_facts.json")
    ap.add_argument("--manual", type=Path, default=DATA / "fleet_manual")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--phrasing", type=int, default=1, help="which phrasing of each fact to ask")
    ap.add_argument("--gap-questions", type=int, default=12)
    ap.add_argument("--spec-questions", type=int, default=12)
    ap.add_argument("-k", type=int, default=4, help="speculative draft length")
    ap.add_argument("--dtype", default="float32",
                    help="cloud dtype; float32 so that a verified prefix and token-by-token "
                         "decoding break near-ties alike")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = asyncio.run(run(args))
    name = (
        "handoff"
        if args.facts.name == "fleet_facts.json"
        else f"handoff-{args.facts.stem.split('_')[0]}"
    )
    path = args.out or RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    plot(out, path.with_suffix(".png"))
    print_table(out)
    print(f"wrote {path} and {path.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
