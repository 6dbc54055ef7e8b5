"""Upstream backend overhead: the cloud service forwarding to an OpenAI-compatible server
vs calling that server directly.

Starts llama-cpp-python's own server (``python -m llama_cpp.server``) on the embedded
GGUF on 127.0.0.1 and measures, on the same prompts (greedy, ``--tokens`` new tokens,
``logprobs=5`` on both paths so the upstream does the same work):

* ``direct``: a streaming ``/v1/completions`` call with httpx, as an application
  would make it without edgecloud;
* ``service``: the device-side :class:`CloudClient` streaming over gRPC from a
  :class:`CloudServer` whose ``openai`` backend makes that same call.

Per path: tokens/s of a stream (first token to last), time to first token (p50), and
end-to-end seconds. The figure the issue asks for: service tokens/s >= 0.9x direct.
The prompts run one at a time, alternating the paths, so both see the same machine.
Writes ``bench/results/upstream.json``.

    python bench/upstream.py                 # 8 prompts x 2 rounds, 48 tokens (~2 minutes)
    python bench/upstream.py --quick         # 4 prompts, 16 tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from _results import RESULTS

from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cloud._records import RecordStore
from edgecloud.cloud._server import CloudServer
from edgecloud.cloud._upstream import UpstreamBackend
from edgecloud.config import CloudConfig
from edgecloud.device import default_model_path, ensure_default_model
from edgecloud.transport import CloudClient
from edgecloud.types import Chunk
from tests.llamaserver import llama_server

PROMPTS = [
    "Q: Why is the sky blue?\nA:", "Q: What is the capital of France?\nA:",
    "The three laws of motion are", "Once upon a time, there was",
    "Q: How do airplanes fly?\nA:", "Photosynthesis is the process",
    "Q: Why is the ocean salty?\nA:", "A servo motor works by",
]  # fmt: skip


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
        "ttft_p50_s": statistics.median(r["ttft_s"] for r in runs),
        "total_p50_s": statistics.median(r["total_s"] for r in runs),
        "tokens": statistics.mean(r["tokens"] for r in runs),
    }


def timing(start: float, arrivals: list[float]) -> dict[str, float]:
    n = len(arrivals)
    span = arrivals[-1] - arrivals[0] if n > 1 else float("nan")
    return {"ttft_s": arrivals[0] - start, "total_s": arrivals[-1] - start, "tokens": n,
            "tokens_per_s": (n - 1) / span if n > 1 and span > 0 else float("nan")}  # fmt: skip


async def direct(http: httpx.AsyncClient, prompt: str, tokens: int) -> dict[str, float]:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0.0, "logprobs": 5,
            "stream": True}  # fmt: skip
    start = time.perf_counter()
    arrivals: list[float] = []
    async with http.stream("POST", "completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                event = json.loads(line[5:])
                if (event.get("choices") or [{}])[0].get("logprobs"):
                    arrivals.append(time.perf_counter())
    return timing(start, arrivals)


async def service(client: CloudClient, prompt: str, tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    arrivals: list[float] = []
    async for event in client.stream(prompt, max_tokens=tokens, temperature=0.0):
        if isinstance(event, Chunk) and event.token_id >= 0:
            arrivals.append(time.perf_counter())
    return timing(start, arrivals)


async def measure(url: str, prompts: list[str], tokens: int, rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="edgecloud-bench-upstream-"))
    config = CloudConfig.model_validate(
        {"insecure": True, "port": 0, "backend": "openai", "upstream": {"url": url}}
    )
    backend = UpstreamBackend.connect(config)
    server = await CloudServer.start(backend, config, records=RecordStore(tmp / "r.db"),
                                     registry=AdapterRegistry(str(tmp / "registry")))  # fmt: skip
    client = CloudClient(f"127.0.0.1:{server.port}", tls=False, timeout_s=600)
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "service": []}
    try:
        async with httpx.AsyncClient(base_url=url + "/", timeout=120) as http:
            await direct(http, prompts[0], 4)  # warm both paths up
            await service(client, prompts[0], 4)
            for r in range(rounds):
                for i, prompt in enumerate(prompts):
                    order = ("direct", "service") if (i + r) % 2 == 0 else ("service", "direct")
                    for path in order:
                        run = (await direct(http, prompt, tokens) if path == "direct"
                               else await service(client, prompt, tokens))  # fmt: skip
                        runs[path].append(run)
    finally:
        await client.close()
        await server.stop(0)
        await backend.aclose()
    return {path: summary(r) for path, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 prompts, 16 tokens, 1 round")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="llama_cpp.server threads")
    args = parser.parse_args()
    if args.quick:
        prompts, tokens, rounds = PROMPTS[:4], 16, 1
    else:
        prompts, tokens, rounds = PROMPTS, args.tokens, args.rounds
    cache = Path(tempfile.gettempdir()) / "edgecloud-bench-cache"
    ensure_default_model(cache)
    with llama_server(default_model_path(cache), threads=args.threads) as (_, url):
        found = asyncio.run(measure(url, prompts, tokens, rounds))
    ratio = found["service"]["tokens_per_s"] / found["direct"]["tokens_per_s"]
    result = {
        "bench": "upstream",
        "upstream": "llama_cpp.server (llama-cpp-python), embedded gemma-3-270m Q4_K_M GGUF",
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or "?",
            "threads": args.threads,
            "load_average_1m": os.getloadavg()[0],
        },
        "prompts": len(prompts), "rounds": rounds, "new_tokens": tokens,
        "direct": found["direct"], "service": found["service"],
        "tokens_per_s_ratio": ratio,
        "ttft_overhead_s": found["service"]["ttft_p50_s"] - found["direct"]["ttft_p50_s"],
        "target": "service tokens/s >= 0.9x direct",
        "meets_target": ratio >= 0.9,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("upstream-quick.json" if args.quick else "upstream.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'path':<8} {'tok/s':>8} {'TTFT p50':>9} {'total p50':>10}")
    for path in ("direct", "service"):
        s = found[path]
        print(
            f"{path:<8} {s['tokens_per_s']:8.1f} {s['ttft_p50_s']:8.3f}s {s['total_p50_s']:9.3f}s"
        )
    print(f"service/direct tokens/s: {ratio:.2f} (target >= 0.9); wrote {out}")


if __name__ == "__main__":
    main()
