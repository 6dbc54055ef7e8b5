"""Escalation overhead: what routing through the device SDK adds on top of the cloud.

On loopback, with the real cloud service in this process (embedded model, CPU):

* pre-generation escalation: time to the first cloud token through the device client
  (``route="cloud"``: policies, prompt token count, endpoint choice, gRPC) minus the
  time to the first token of the same request sent straight to the service with
  ``CloudClient`` (the service's own time to first token as a client sees it), run
  alternately; p50/p90 of the per-pair difference. Target: p50 <= 5 ms.
* mid-answer hand-off gap: time from the last local token to the first cloud token
  when the confidence window trips, and, for reference, the service's own time to
  first token for the same continuation request.

    python bench/escalation.py [--pairs 30]

Prints a table; writes bench/results/escalation.json.
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

PROMPTS = ["Why is the sky blue?", "The capital of France is", "Name three primary colours:",
           "A robot arm is", "The best way to learn is"]  # fmt: skip


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def first_token_s(agen: Any) -> float:
    t = time.perf_counter()
    async for _ in agen:
        dt = time.perf_counter() - t
        break
    await agen.aclose()
    return dt


async def run(pairs: int) -> dict[str, Any]:
    from edgecloud import AsyncClient
    from edgecloud.config import Settings
    from edgecloud.transport import CloudClient
    from edgecloud.types import SamplingParams

    async with local_cloud(knowledge=None) as (server, _backend, _config):
        target = f"127.0.0.1:{server.port}"

        def settings(**router: Any) -> Settings:
            return Settings.load(device={
                "model": {"n_threads": 2},
                "cloud": {"endpoints": [{"target": target, "tls": False}], "health_interval_s": 3600},
                "router": router, "log": {"enabled": False},
            })  # fmt: skip

        direct = CloudClient(target, tls=False)
        device = await asyncio.to_thread(AsyncClient.local, settings=settings())
        params = SamplingParams(max_tokens=2)
        pre: list[float] = []
        own: list[float] = []
        for i in range(pairs + 2):  # the first two warm both paths up
            prompt = PROMPTS[i % len(PROMPTS)]
            order = ("direct", "device") if i % 2 else ("device", "direct")
            got = {}
            for who in order:
                if who == "direct":
                    got[who] = await first_token_s(direct.stream(prompt, params))
                else:
                    got[who] = await first_token_s(
                        device.stream(prompt, route="cloud", max_tokens=2)
                    )
            if i >= 2:
                own.append(got["direct"])
                pre.append(got["device"] - got["direct"])
        await device.aclose()

        trip = await asyncio.to_thread(
            AsyncClient.local, settings=settings(min_mean_logprob=-0.0001, min_tokens=4, window=4)
        )
        gaps: list[float] = []
        cont_own: list[float] = []
        for i in range(max(pairs // 2, 5)):
            prompt = PROMPTS[i % len(PROMPTS)]
            times: list[tuple[str, float]] = []
            local_text = ""
            async for chunk in trip.stream(prompt, max_tokens=8):
                times.append((chunk.source, time.perf_counter()))
                if chunk.source == "local":
                    local_text += chunk.text
            last_local = max(t for s, t in times if s == "local")
            first_cloud = min(t for s, t in times if s == "cloud")
            gaps.append(first_cloud - last_local)
            cont_own.append(
                await first_token_s(direct.stream(prompt, params, assistant_prefix=local_text))
            )
        await trip.aclose()
        await direct.close()
    ms = 1000.0
    return {
        "pairs": pairs,
        "pre_generation_overhead_ms": {"p50": statistics.median(pre) * ms, "p90": _pct(pre, 0.9) * ms,
                                       "mean": statistics.mean(pre) * ms},
        "cloud_own_ttft_ms": {"p50": statistics.median(own) * ms, "p90": _pct(own, 0.9) * ms},
        "handoff_gap_ms": {"p50": statistics.median(gaps) * ms, "p90": _pct(gaps, 0.9) * ms},
        "continuation_own_ttft_ms": {"p50": statistics.median(cont_own) * ms},
        "target": {"pre_generation_overhead_p50_ms_max": 5.0},
        "meets_target": statistics.median(pre) * ms <= 5.0,
        "note": "overhead = device-client TTFT minus direct CloudClient TTFT on the same request, alternated",
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=30)
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    result = asyncio.run(run(args.pairs))
    table = Table(title="escalation overhead on loopback (ms)")
    for col in ("measure", "p50", "p90"):
        table.add_column(col, justify="right")
    for key in (
        "pre_generation_overhead_ms",
        "cloud_own_ttft_ms",
        "handoff_gap_ms",
        "continuation_own_ttft_ms",
    ):
        v = result[key]
        table.add_row(key, f"{v['p50']:.2f}", f"{v.get('p90', float('nan')):.2f}")
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "escalation.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
