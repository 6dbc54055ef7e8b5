"""Local decode speed: the SDK's confidence-scored stream vs raw llama-cpp-python.

In one process, alternating on the same prompts and settings (2 threads, greedy,
128 new tokens): raw ``Llama.create_completion`` (no logprobs) and
``Client.stream`` (per-token logprob + entropy). Also llama-cpp-python's own
``logprobs=`` path (needs ``logits_all=True``), and, in fresh subprocesses, peak
RSS and time from ``Client.local()`` to the first token with the model already
assembled.

    python bench/local_decode.py [--rounds 3] [--tokens 128]

Prints a table, writes bench/results/local_decode.json and local_decode.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import RESULTS

PROMPTS = [
    "Explain what a servo motor is.",
    "Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Japan?\nA:",
    "Write a short story about a robot that learns to paint.",
    "The history of the bicycle begins",
    "Here is a list of ten common household tools:\n1.",
    "def fibonacci(n):",
]

# Runs in a fresh interpreter. Peak RSS is VmHWM from /proc (getrusage's ru_maxrss would
# inherit the parent's peak across fork). Times: from before the imports ("cold") and from
# the Client.local() / Llama() call, each to the first streamed token.
_CHILD = r"""
import json, sys, time
t_cold = time.perf_counter()
mode, tokens, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3]
prompt = "Explain what a servo motor is."
if mode == "sdk":
    from edgecloud import Client
    from edgecloud.config import Settings
    settings = Settings.load(cache_dir=cache)
    t0 = time.perf_counter()
    client = Client.local(settings=settings, n_threads=2)
    first = None
    n = 0
    for chunk in client.stream(prompt, max_tokens=tokens):
        if first is None:
            first = time.perf_counter()
        n += 1
else:
    from llama_cpp import Llama
    from edgecloud.device import default_model_path
    from pathlib import Path
    t0 = time.perf_counter()
    llm = Llama(str(default_model_path(Path(cache))), n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False)
    first = None
    n = 0
    for part in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, stream=True):
        if first is None:
            first = time.perf_counter()
        n += 1
status = open("/proc/self/status").read()
rss_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"ttft_s": first - t0, "cold_ttft_s": first - t_cold, "rss_mb": rss_mb, "tokens": n}))
"""


def _child(mode: str, tokens: int, cache: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(tokens), str(cache)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from llama_cpp import Llama
    from rich.console import Console
    from rich.table import Table

    from edgecloud import Client
    from edgecloud.backends import LlamaCppBackend
    from edgecloud.config import Settings
    from edgecloud.device import ensure_default_model

    console = Console()
    load_before = os.getloadavg()
    settings = Settings.load()
    path = ensure_default_model(settings.cache_dir)
    n = args.tokens

    pairings = {}
    for fa in ("on", "off"):
        raw = Llama(str(path), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                    flash_attn=(fa == "on"), verbose=False)  # fmt: skip
        sdk = Client(LlamaCppBackend(path, n_ctx=2048, n_threads=args.threads, flash_attn=fa))
        times = {"raw": 0.0, "sdk": 0.0}
        counts = {"raw": 0, "sdk": 0}
        pair_ratios: list[float] = []
        same_text = 0
        for rnd in range(args.rounds + 1):  # round 0 warms up and is not counted
            for i, prompt in enumerate(PROMPTS):
                order = ("raw", "sdk") if (rnd + i) % 2 == 0 else ("sdk", "raw")
                texts = {}
                rate = {}
                for who in order:
                    t = time.perf_counter()
                    if who == "raw":
                        r = raw.create_completion(prompt, max_tokens=n, temperature=0.0)
                        got, texts[who] = r["usage"]["completion_tokens"], r["choices"][0]["text"]
                    else:
                        res = sdk.generate(prompt, max_tokens=n)
                        got, texts[who] = res.usage.completion_tokens, res.text
                    dt = time.perf_counter() - t
                    rate[who] = got / dt
                    if rnd:
                        times[who] += dt
                        counts[who] += got
                if rnd:
                    same_text += texts["raw"] == texts["sdk"]
                    pair_ratios.append(rate["sdk"] / rate["raw"])
        raw_tok_s = counts["raw"] / times["raw"]
        sdk_tok_s = counts["sdk"] / times["sdk"]
        pairings[fa] = {
            "raw_tok_s": raw_tok_s,
            "sdk_tok_s": sdk_tok_s,
            # Median of ratios of adjacent runs on the same prompt: robust to bursts of
            # other load on the machine, which hit both engines of a pair alike.
            "ratio": statistics.median(pair_ratios),
            "aggregate_ratio": sdk_tok_s / raw_tok_s,
            "pair_ratios": pair_ratios,
            "tokens_raw": counts["raw"],
            "tokens_sdk": counts["sdk"],
            "identical_greedy_texts": f"{same_text}/{args.rounds * len(PROMPTS)}",
        }
        sdk.close()
        raw.close()

    lp_tokens = 32
    lp = Llama(str(path), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
               logits_all=True, verbose=False)  # fmt: skip
    lp.create_completion(PROMPTS[0], max_tokens=4, temperature=0.0, logprobs=1)
    t = time.perf_counter()
    got = 0
    for prompt in PROMPTS[:2]:
        got += lp.create_completion(prompt, max_tokens=lp_tokens, temperature=0.0, logprobs=1)[
            "usage"
        ]["completion_tokens"]
    lp_tok_s = got / (time.perf_counter() - t)
    lp.close()

    sdk_runs = [_child("sdk", n, settings.cache_dir) for _ in range(3)]
    raw_runs = [_child("raw", n, settings.cache_dir) for _ in range(3)]

    default = pairings[
        "on"
    ]  # the SDK default (flash_attn="auto") resolves to on for this CPU build
    result = {
        "model": path.name,
        "threads": args.threads,
        "new_tokens": n,
        "rounds": args.rounds,
        "prompts": len(PROMPTS),
        "raw_tok_s": default["raw_tok_s"],
        "sdk_tok_s": default["sdk_tok_s"],
        "ratio": default["ratio"],
        "by_flash_attn": pairings,
        "llama_cpp_logprobs_tok_s": lp_tok_s,
        "llama_cpp_logprobs_ratio_vs_raw": lp_tok_s / default["raw_tok_s"],
        "sdk_rss_mb": max(r["rss_mb"] for r in sdk_runs),
        "raw_rss_mb": max(r["rss_mb"] for r in raw_runs),
        "sdk_time_to_first_token_s": statistics.median(r["ttft_s"] for r in sdk_runs),
        "raw_time_to_first_token_s": statistics.median(r["ttft_s"] for r in raw_runs),
        "sdk_cold_time_to_first_token_s": statistics.median(r["cold_ttft_s"] for r in sdk_runs),
        "raw_cold_time_to_first_token_s": statistics.median(r["cold_ttft_s"] for r in raw_runs),
        # Other work on the machine skews absolute tok/s (alternation keeps the ratio fair);
        # load averages are kept so a reader can tell a quiet run from a busy one.
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "targets": {"ratio_min": 0.95, "sdk_rss_mb_max": 500, "ttft_s_max": 1.5},
    }
    result["meets_targets"] = (
        result["ratio"] >= 0.95
        and result["sdk_rss_mb"] <= 500
        and result["sdk_time_to_first_token_s"] <= 1.5
    )

    table = Table(title=f"local decode, {n} new tokens, {args.threads} threads, greedy")
    for col in ("", "raw llama-cpp", "edgecloud SDK", "ratio (median pair)"):
        table.add_column(col, justify="right")
    for fa, p in pairings.items():
        table.add_row(
            f"tok/s (flash_attn {fa})",
            f"{p['raw_tok_s']:.1f}",
            f"{p['sdk_tok_s']:.1f}",
            f"{p['ratio']:.3f}",
        )
    table.add_row(
        "tok/s llama-cpp logprobs=1",
        f"{lp_tok_s:.1f}",
        "",
        f"{result['llama_cpp_logprobs_ratio_vs_raw']:.3f}",
    )
    table.add_row("peak RSS MB", f"{result['raw_rss_mb']:.0f}", f"{result['sdk_rss_mb']:.0f}", "")
    table.add_row("load → first token s", f"{result['raw_time_to_first_token_s']:.2f}",
                  f"{result['sdk_time_to_first_token_s']:.2f}", "")  # fmt: skip
    table.add_row("incl. imports s", f"{result['raw_cold_time_to_first_token_s']:.2f}",
                  f"{result['sdk_cold_time_to_first_token_s']:.2f}", "")  # fmt: skip
    console.print(table)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "local_decode.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, RESULTS / "local_decode.png")
    console.print(
        f"wrote {RESULTS / 'local_decode.json'} and local_decode.png; meets targets: {result['meets_targets']}"
    )


def _plot(result: dict, out: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        "raw llama-cpp\n(no logprobs)",
        "edgecloud SDK\n(logprob+entropy)",
        "llama-cpp\nlogprobs=1",
    ]
    values = [result["raw_tok_s"], result["sdk_tok_s"], result["llama_cpp_logprobs_tok_s"]]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    bars = ax.bar(labels, values, color=["#888888", "#2b7bba", "#d95f02"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("tokens / s")
    ax.set_title(
        f"Gemma 3 270M Q4_K_M, {result['threads']} threads, greedy, {result['new_tokens']} tokens"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
