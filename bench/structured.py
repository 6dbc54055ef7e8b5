"""What a JSON schema costs: decode speed of schema-constrained answers against free ones,
on the device (llama.cpp grammar) and, with ``--cloud``, in the cloud's batch (xgrammar
bitmasks), same prompts, greedy, same model.

Device: each prompt is answered free and constrained in alternation (the order flips every
round so that other load on the machine hits both alike); the ratio is the median over
prompts and rounds of constrained / free decode tokens per second (tokens after the first,
over the time after the first). A constrained step costs the grammar's check of the
model's own choice, and, when the grammar refuses it, a look at the 64 most likely tokens
or, last, a mask of the whole vocabulary (45 ms on the 262k-token vocabulary here):
``full_masks`` counts those steps.

Cloud: the same prompts as one batch, all free, then all constrained, then half and half;
the ratio is constrained / free decode steps per second of the whole batch.

    python bench/structured.py [--rounds 2] [--tokens 48] [--cloud]

Each ratio is given over wall time and over this process's CPU time: on a shared machine
the CPU-time ratio moves less with other load (wall time counts the waits for a core).

Prints a table, writes bench/results/structured.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _results import RESULTS

TARGET = 0.8
"""Constrained decode speed as a fraction of free decode speed."""

ORDERS = [
    "Take the box from bay 3 and put it on the belt.",
    "Wait until the door of bay 12 is closed, then report.",
    "Place the crate you hold into bay 7; it is fragile.",
    "Pick the red tote in bay 1 and hand it to the operator.",
]
SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"enum": ["pick", "place", "wait"]},
        "bay": {"type": "integer"},
        "note": {"type": "string", "maxLength": 40},
    },
    "required": ["action", "bay", "note"],
}


def _messages(order: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Robot order: {order}\nAnswer as JSON with action, "
             "bay and a short note for the operator."}]  # fmt: skip


def _rate(arrivals: list[float]) -> float:
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        return float("nan")
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def _device_run(client: Any, order: str, tokens: int, schema: Any) -> dict[str, Any]:
    arrivals: list[float] = []
    cpu: list[float] = []
    with client.stream(_messages(order), max_tokens=tokens, temperature=0, schema=schema) as s:
        for chunk in s:
            if chunk.token_id >= 0:
                arrivals.append(time.perf_counter())
                cpu.append(time.process_time())
    return {"tok_s": _rate(arrivals), "tok_per_cpu_s": _rate(cpu), "tokens": len(arrivals),
            "text": s.result.text,
            "valid": s.result.parsed is not None if schema else None}  # fmt: skip


def bench_device(args: argparse.Namespace) -> dict[str, Any]:
    from edgecloud import Client
    from edgecloud.backends import LlamaCppBackend, _grammar
    from edgecloud.device import default_model_path, ensure_default_model

    cache = Path(os.environ.get("EDGECLOUD_CACHE_DIR", Path.home() / ".cache" / "edgecloud"))
    ensure_default_model(cache)
    backend = LlamaCppBackend(default_model_path(cache), n_ctx=1024, n_threads=args.threads)
    client = Client(backend)
    full_masks = 0
    original_mask = _grammar.FullMask.mask

    def counting(self: Any, grammar: Any, logits: Any) -> Any:
        nonlocal full_masks
        full_masks += 1
        return original_mask(self, grammar, logits)

    _grammar.FullMask.mask = counting  # type: ignore[method-assign]
    runs: list[dict[str, Any]] = []
    try:
        _device_run(client, ORDERS[0], 8, SCHEMA)  # warm: the grammar's first build
        full_masks = 0
        for r in range(args.rounds):
            for order in ORDERS:
                modes = ["free", "constrained"] if r % 2 == 0 else ["constrained", "free"]
                pair = {}
                for mode in modes:
                    pair[mode] = _device_run(
                        client, order, args.tokens, SCHEMA if mode == "constrained" else None
                    )
                runs.append({"round": r, "order": order, **pair})
    finally:
        _grammar.FullMask.mask = original_mask  # type: ignore[method-assign]
        client.close()
    ratios = [p["constrained"]["tok_s"] / p["free"]["tok_s"] for p in runs]
    cpu_ratios = [p["constrained"]["tok_per_cpu_s"] / p["free"]["tok_per_cpu_s"] for p in runs]
    return {
        "free_tok_s": statistics.median(p["free"]["tok_s"] for p in runs),
        "constrained_tok_s": statistics.median(p["constrained"]["tok_s"] for p in runs),
        "ratio": statistics.median(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "valid": f"{sum(bool(p['constrained']['valid']) for p in runs)}/{len(runs)}",
        "constrained_tokens": sum(p["constrained"]["tokens"] for p in runs),
        "full_masks": full_masks,
        "runs": runs,
    }


def _prompt(order: str) -> str:
    return (f"Robot order: {order}\nAnswer as JSON with action, bay and a short note for "
            "the operator.\nJSON:")  # fmt: skip


async def _cloud_batch(backend: Any, params: list[Any]) -> tuple[float, float]:
    """Decode steps per second of wall time and of this process's CPU time."""
    from edgecloud.cloud import CloudRequest

    steps_before = backend._scheduler.steps
    started, cpu = time.perf_counter(), time.process_time()

    async def one(order: str, p: Any) -> None:
        async for _ in backend.generate(CloudRequest(prompt=_prompt(order), params=p)):
            pass

    await asyncio.gather(*(one(o, p) for o, p in zip(ORDERS, params, strict=True)))
    steps = backend._scheduler.steps - steps_before
    return steps / (time.perf_counter() - started), steps / (time.process_time() - cpu)


def bench_cloud(args: argparse.Namespace) -> dict[str, Any]:
    from edgecloud.cloud import TorchBackend
    from edgecloud.config import Settings
    from edgecloud.types import SamplingParams

    cloud = {"insecure": True, "max_context_tokens": 512, "max_new_tokens": args.tokens,
             "default_max_tokens": args.tokens,
             "model": {"threads": args.threads}}  # fmt: skip
    backend = TorchBackend.load(Settings.load(cloud=cloud))
    free = SamplingParams(max_tokens=args.tokens)
    constrained = SamplingParams(max_tokens=args.tokens, json_schema=json.dumps(SCHEMA))
    mixes = {
        "free": [free] * len(ORDERS),
        "constrained": [constrained] * len(ORDERS),
        "mixed": [constrained, free] * (len(ORDERS) // 2),
    }
    rates: dict[str, list[float]] = {k: [] for k in mixes}
    cpu_rates: dict[str, list[float]] = {k: [] for k in mixes}
    try:
        asyncio.run(_cloud_batch(backend, mixes["constrained"]))  # warm: tokenizer table
        for _ in range(args.rounds):
            for name, params in mixes.items():
                wall, cpu = asyncio.run(_cloud_batch(backend, params))
                rates[name].append(wall)
                cpu_rates[name].append(cpu)
    finally:
        backend.close()
    steps = {k: statistics.median(v) for k, v in rates.items()}
    cpu_steps = {k: statistics.median(v) for k, v in cpu_rates.items()}
    return {"batch": len(ORDERS), "steps_per_s": steps, "steps_per_cpu_s": cpu_steps,
            "ratio": steps["constrained"] / steps["free"],
            "cpu_ratio": cpu_steps["constrained"] / cpu_steps["free"],
            "mixed_ratio": steps["mixed"] / steps["free"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cloud", action="store_true", help="also the cloud's batched decoding")
    args = ap.parse_args()
    load_before = os.getloadavg()
    device = bench_device(args)
    cloud = bench_cloud(args) if args.cloud else None
    result = {
        "threads": args.threads, "new_tokens": args.tokens, "rounds": args.rounds,
        "prompts": len(ORDERS), "schema": SCHEMA, "device": device, "cloud": cloud,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "target_ratio": TARGET,
        "meets_target": device["ratio"] >= TARGET and (cloud is None or cloud["ratio"] >= TARGET),
    }  # fmt: skip
    print(f"{'where':8} {'free':>14} {'constrained':>14} {'wall':>6} {'CPU':>6}  notes")
    print(f"{'device':8} {device['free_tok_s']:10.1f} t/s {device['constrained_tok_s']:10.1f} t/s "
          f"{device['ratio']:5.2f}x {device['cpu_ratio']:5.2f}x  valid {device['valid']}, "
          f"full-vocabulary masks {device['full_masks']} of {device['constrained_tokens']} "
          "tokens")  # fmt: skip
    if cloud is not None:
        s = cloud["steps_per_s"]
        print(f"{'cloud':8} {s['free']:7.1f} step/s {s['constrained']:7.1f} step/s "
              f"{cloud['ratio']:5.2f}x {cloud['cpu_ratio']:5.2f}x  batch of {cloud['batch']}; "
              f"half constrained: {cloud['mixed_ratio']:.2f}x")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "structured.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
