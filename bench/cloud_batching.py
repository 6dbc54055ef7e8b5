"""Cloud batching benchmark: concurrent gRPC streams vs one-at-a-time transformers.generate.

Starts the inference service on 127.0.0.1 (port 0, plain text) with the default
model on CPU, drives 1, 4, 16 and 32 concurrent streams of 64 new tokens
(greedy) and records per concurrency: aggregate tokens/s, p50/p99 time to first
token and p50 inter-token latency. In the same run it measures

* the baseline: the 16-stream load run one request at a time through plain
  ``model.generate`` (same model object, same prompts);
* gRPC overhead: one stream through the service vs the same backend called
  in-process;
* transformers' own continuous batching (``generate_batch``) on the 16-stream
  load, against our scheduler on the same load;
* per-request LoRA: 16 streams all on the base model vs the same load mixing two
  adapters in one batch (peft mixed-adapter inference).

Writes ``bench/results/cloud_batching.json`` and ``cloud_batching.png`` and
prints a table. Figures the issue asks for: aggregate tok/s at 16 streams
>= 5x the sequential baseline; p99 TTFT at 16 streams <= 3x the single-stream
value; gRPC single-stream tok/s >= 0.9x in-process.

    python bench/cloud_batching.py                 # full run (~10 minutes on 2 cores)
    python bench/cloud_batching.py --quick         # 1 and 4 streams, 16 tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _results import RESULTS

from edgecloud.cloud import CloudServer, TorchBackend
from edgecloud.cloud._torch import CloudRequest
from edgecloud.config import Settings
from edgecloud.transport import CloudClient
from edgecloud.types import Chunk, SamplingParams

PROMPTS = [
    "Why is the sky blue?", "The capital of France is", "def fibonacci(n):",
    "Once upon a time, there was", "Water boils at", "The best way to learn a language is",
    "In 1969, the first humans", "A servo motor works by", "Photosynthesis is the process",
    "The three laws of motion are", "To bake bread you need", "The largest planet is",
    "import numpy as np\n", "The stock market today", "My favourite recipe is",
    "Electric cars are", "The meaning of life", "How do airplanes fly?",
    "The Great Wall of China", "Quantum computers use", "Dear hiring manager,",
    "The human heart has", "Rainbows appear when", "SELECT * FROM users WHERE",
    "The history of Rome begins", "Volcanoes erupt because", "A good night's sleep",
    "The internet was invented", "Bees make honey by", "The Pythagorean theorem states",
    "Machine learning is", "The ocean is salty because",
]  # fmt: skip


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def one_stream(
    client: CloudClient, prompt: str, tokens: int, adapter: str | None = None
) -> dict[str, Any]:
    start = time.perf_counter()
    arrivals: list[float] = []
    async for event in client.stream(prompt, max_tokens=tokens, adapter_id=adapter, timeout_s=600):
        if isinstance(event, Chunk) and event.token_id >= 0:
            arrivals.append(time.perf_counter())
    end = time.perf_counter()
    return {"start": start, "end": end, "arrivals": arrivals}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    start = min(r["start"] for r in runs)
    end = max(r["end"] for r in runs)
    tokens = sum(len(r["arrivals"]) for r in runs)
    ttft = [r["arrivals"][0] - r["start"] for r in runs if r["arrivals"]]
    itl = [b - a for r in runs for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    return {
        "streams": len(runs),
        "tokens": tokens,
        "wall_s": end - start,
        "tokens_per_s": tokens / (end - start),
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p99_s": pct(ttft, 0.99),
        "itl_p50_s": pct(itl, 0.5),
    }


async def drive(
    target: str,
    streams: int,
    tokens: int,
    adapters: list[str | None] | None = None,
    offset: int = 0,
    keep_runs: bool = False,
) -> dict[str, Any]:
    async with CloudClient(target, tls=False, timeout_s=600) as client:
        runs = await asyncio.gather(*[
            one_stream(client, PROMPTS[(offset + i) % len(PROMPTS)], tokens,
                       adapters[i % len(adapters)] if adapters else None)
            for i in range(streams)
        ])  # fmt: skip
    out = summarize(list(runs))
    if keep_runs:
        out["runs"] = list(runs)
    return out


def pool_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One level over several rounds: median tok/s; TTFT and ITL over every request."""
    runs = [r for rnd in rounds for r in rnd["runs"]]
    ttft = [r["arrivals"][0] - r["start"] for r in runs if r["arrivals"]]
    itl = [b - a for r in runs for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    return {
        "streams": rounds[0]["streams"],
        "rounds": len(rounds),
        "requests": len(runs),
        "tokens": sum(r["tokens"] for r in rounds),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rounds),
        "tokens_per_s_rounds": [r["tokens_per_s"] for r in rounds],
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p99_s": pct(ttft, 0.99),
        "ttft_max_s": max(ttft),
        "ttft_p99_s_rounds": [r["ttft_p99_s"] for r in rounds],
        "itl_p50_s": pct(itl, 0.5),
    }


async def in_process(backend: TorchBackend, prompt: str, tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    arrivals: list[float] = []
    async for event in backend.generate(CloudRequest(prompt, SamplingParams(max_tokens=tokens))):
        if isinstance(event, Chunk) and event.token_id >= 0:
            arrivals.append(time.perf_counter())
    return summarize([{"start": start, "end": time.perf_counter(), "arrivals": arrivals}])


def sequential_baseline(
    backend: TorchBackend, prompts: list[str], tokens: int, threads: int
) -> dict[str, Any]:
    """The same load, one request at a time, through plain transformers ``generate``."""
    import torch

    torch.set_num_threads(threads)
    model, tok = backend.engine.model, backend.tokenizer
    total = 0
    start = time.perf_counter()
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
        total += out.shape[1] - ids["input_ids"].shape[1]
    wall = time.perf_counter() - start
    return {
        "requests": len(prompts), "tokens": total, "wall_s": wall, "tokens_per_s": total / wall,
        "torch_threads": threads,
    }  # fmt: skip


def gemm_probe() -> dict[str, float]:
    """ms per [16 x 640] @ [640 x 2048] matmul at 1 thread and at torch's default.

    On small shared VMs the multi-threaded sgemm can pay a wake-up penalty per
    call far larger than the arithmetic; this records whether that was so here.
    """
    import torch

    default = torch.get_num_threads()
    w, a = torch.randn(2048, 640), torch.randn(16, 640)
    out = {}
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        torch.nn.functional.linear(a, w)
        start = time.perf_counter()
        for _ in range(20):
            torch.nn.functional.linear(a, w)
        out[f"threads_{threads}_ms"] = (time.perf_counter() - start) / 20 * 1000
    torch.set_num_threads(default)
    return out


def transformers_cb(backend: TorchBackend, prompts: list[str], tokens: int) -> dict[str, Any]:
    """transformers' own continuous batching (``generate_batch``) on the same load."""
    from transformers import GenerationConfig

    model, tok = backend.engine.model, backend.tokenizer
    inputs = [tok(p)["input_ids"] for p in prompts]
    config = GenerationConfig(
        max_new_tokens=tokens, do_sample=False, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    start = time.perf_counter()
    # generate_batch manages its own no-grad state; inference_mode breaks its static buffers.
    outputs = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    wall = time.perf_counter() - start
    total = sum(len(o.generated_tokens) for o in outputs.values())
    return {"requests": len(prompts), "tokens": total, "wall_s": wall, "tokens_per_s": total / wall}


def make_adapters(backend: TorchBackend, where: Path) -> dict[str, Path]:
    """Two random LoRA adapters (rank 8 on attention projections) saved with peft."""
    import torch
    from peft import LoraConfig, get_peft_model

    paths = {}
    for i, name in enumerate(("alpha", "beta")):
        torch.manual_seed(i)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                         init_lora_weights=False)  # fmt: skip
        peft_model = get_peft_model(backend.engine.model, cfg)
        paths[name] = where / name
        peft_model.save_pretrained(paths[name])
        peft_model.unload()
    return paths


def plot(levels: list[dict[str, Any]], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [lv["streams"] for lv in levels]
    ax1.plot(xs, [lv["tokens_per_s"] for lv in levels], "o-", label="gRPC service (ours)")
    ax1.axhline(baseline, color="gray", ls="--", label="sequential transformers.generate")
    ax1.set_xlabel("concurrent streams")
    ax1.set_ylabel("aggregate tokens/s")
    ax1.set_xscale("log", base=2)
    ax1.legend()
    ax2.plot(xs, [lv["ttft_p99_s"] * 1000 for lv in levels], "o-", label="TTFT p99")
    ax2.plot(xs, [lv["ttft_p50_s"] * 1000 for lv in levels], "s-", label="TTFT p50")
    ax2.plot(xs, [lv["itl_p50_s"] * 1000 for lv in levels], "^-", label="inter-token p50")
    ax2.set_xlabel("concurrent streams")
    ax2.set_ylabel("ms")
    ax2.set_xscale("log", base=2)
    ax2.legend()
    fig.suptitle("edgecloud cloud service, Gemma 3 270M, CPU float32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    default_threads = torch.get_num_threads()
    probe = gemm_probe()
    service_threads = args.threads or default_threads
    model_cfg = {"threads": service_threads}
    settings = Settings.load(
        cloud={"insecure": True, "port": 0, "max_running_sequences": 32, "model": model_cfg}
    )
    t0 = time.perf_counter()
    backend = TorchBackend.load(settings)
    load_s = time.perf_counter() - t0
    server = await CloudServer.start(backend, settings.cloud)
    target = f"127.0.0.1:{server.port}"
    tokens = args.tokens
    out: dict[str, Any] = {
        "model": backend.info.model, "device": backend.info.device, "dtype": backend.info.dtype,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "new_tokens": tokens,
        "load_s": load_s, "gemm_probe_ms": probe, "service_torch_threads": service_threads,
    }  # fmt: skip
    try:
        await drive(target, 2, 4)  # warm-up: first forward passes are slow
        # Rounds interleave the levels (1, 4, 16, 32, 1, 4, ...) so a noisy moment on
        # the machine does not land on one level only; each round rotates the prompts.
        per_level: dict[int, list[dict[str, Any]]] = {n: [] for n in args.levels}
        for rnd in range(args.rounds):
            for streams in args.levels:
                level = await drive(target, streams, tokens, offset=rnd * 7, keep_runs=True)
                per_level[streams].append(level)
                print(f"  round {rnd + 1} {streams:>3} streams: {level['tokens_per_s']:.1f} tok/s, "
                      f"TTFT p99 {level['ttft_p99_s'] * 1000:.0f} ms", flush=True)  # fmt: skip
        out["levels"] = [pool_rounds(per_level[n]) for n in args.levels]

        grpc_runs, local_runs = [], []
        for _ in range(args.overhead_reps):
            grpc_runs.append((await drive(target, 1, tokens))["tokens_per_s"])
            local_runs.append((await in_process(backend, PROMPTS[0], tokens))["tokens_per_s"])
        out["grpc_overhead"] = {
            "grpc_tokens_per_s": statistics.median(grpc_runs),
            "in_process_tokens_per_s": statistics.median(local_runs),
            "runs_grpc": grpc_runs, "runs_in_process": local_runs,
        }  # fmt: skip
        out["grpc_overhead"]["ratio"] = (
            out["grpc_overhead"]["grpc_tokens_per_s"]
            / out["grpc_overhead"]["in_process_tokens_per_s"]
        )
        print(f"  gRPC/in-process: {out['grpc_overhead']['ratio']:.3f}", flush=True)

        base_load = [PROMPTS[i % len(PROMPTS)] for i in range(args.baseline_requests)]
        # The baseline gets its best thread count (probed on two requests), not ours.
        probes = {}
        for threads in sorted({1, default_threads}):
            probes[threads] = await asyncio.to_thread(
                sequential_baseline, backend, base_load[:2], tokens, threads
            )
        best = max(probes, key=lambda t: probes[t]["tokens_per_s"])
        out["baseline_thread_probe"] = {str(t): p["tokens_per_s"] for t, p in probes.items()}
        out["baseline_sequential_generate"] = await asyncio.to_thread(
            sequential_baseline, backend, base_load, tokens, best
        )
        torch.set_num_threads(service_threads)
        print(f"  sequential: {out['baseline_sequential_generate']['tokens_per_s']:.1f} tok/s")
        if args.compare_transformers:
            out["transformers_generate_batch"] = await asyncio.to_thread(
                transformers_cb, backend, base_load, tokens
            )
            print(
                f"  generate_batch: {out['transformers_generate_batch']['tokens_per_s']:.1f} tok/s"
            )
    finally:
        await server.stop(1)
        backend.close()

    if args.adapters:
        with tempfile.TemporaryDirectory() as tmp:
            paths = make_adapters(backend, Path(tmp))
            s2 = Settings.load(
                cloud={"insecure": True, "port": 0, "model": {**model_cfg, "adapters": paths}}
            )
            b2 = TorchBackend.load(s2)
            srv2 = await CloudServer.start(b2, s2.cloud)
            try:
                t2 = f"127.0.0.1:{srv2.port}"
                await drive(t2, 2, 4)
                n = args.adapter_streams
                base_only = await drive(t2, n, tokens)
                mixed = await drive(t2, n, tokens, adapters=["alpha", "beta"])
                out["lora"] = {
                    "streams": n, "base_only": base_only, "mixed_two_adapters": mixed,
                    "mixed_over_base": mixed["tokens_per_s"] / base_only["tokens_per_s"],
                }  # fmt: skip
            finally:
                await srv2.stop(1)
                b2.close()
    return out


def report(out: dict[str, Any]) -> None:
    base = out["baseline_sequential_generate"]["tokens_per_s"]
    levels = {lv["streams"]: lv for lv in out["levels"]}
    print(
        f"\nmodel {out['model']} on {out['device']} {out['dtype']}, {out['new_tokens']} new tokens"
    )
    print(
        f"{'streams':>8} {'tok/s':>8} {'x seq':>7} {'TTFT p50':>10} {'TTFT p99':>10} {'ITL p50':>9}"
    )
    for n, lv in levels.items():
        print(f"{n:>8} {lv['tokens_per_s']:>8.1f} {lv['tokens_per_s'] / base:>7.2f} "
              f"{lv['ttft_p50_s'] * 1000:>8.0f}ms {lv['ttft_p99_s'] * 1000:>8.0f}ms "
              f"{lv['itl_p50_s'] * 1000:>7.0f}ms")  # fmt: skip
    print(f"sequential transformers.generate baseline: {base:.1f} tok/s")
    figures: dict[str, Any] = {}
    if 16 in levels:
        figures["speedup_16_vs_sequential"] = levels[16]["tokens_per_s"] / base
    if 16 in levels and 1 in levels:
        figures["ttft_p99_16_over_1"] = levels[16]["ttft_p99_s"] / levels[1]["ttft_p99_s"]
    figures["grpc_over_in_process"] = out["grpc_overhead"]["ratio"]
    if "transformers_generate_batch" in out and 16 in levels:
        figures["ours_16_over_generate_batch_16"] = (
            levels[16]["tokens_per_s"] / out["transformers_generate_batch"]["tokens_per_s"]
        )
    if "lora" in out:
        figures["lora_mixed_over_base"] = out["lora"]["mixed_over_base"]
    figures["targets"] = {
        "speedup_16_vs_sequential": ">= 5",
        "ttft_p99_16_over_1": "<= 3",
        "grpc_over_in_process": ">= 0.9",
    }
    out["figures"] = figures
    for k, v in figures.items():
        if k != "targets":
            print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 streams, 16 tokens")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="runs of every level, interleaved; TTFT percentiles pool them",
    )
    parser.add_argument("--baseline-requests", type=int, default=16)
    parser.add_argument("--overhead-reps", type=int, default=3)
    parser.add_argument("--no-compare-transformers", dest="compare_transformers",
                        action="store_false")  # fmt: skip
    parser.add_argument("--no-adapters", dest="adapters", action="store_false")
    parser.add_argument("--adapter-streams", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the service (0: torch's default)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "cloud_batching.json")
    args = parser.parse_args()
    if args.quick:
        args.levels, args.tokens, args.baseline_requests, args.overhead_reps = [1, 4], 16, 2, 1
        args.adapter_streams, args.rounds = 4, 1
    result = asyncio.run(main(args))
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result["levels"], result["baseline_sequential_generate"]["tokens_per_s"],
         args.out.with_suffix(".png"))  # fmt: skip
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
