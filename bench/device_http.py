"""The OpenAI endpoint's cost: decode speed and time to first token through
``edgecloud device serve`` (the official ``openai`` client, streaming) against the SDK
in-process (``AsyncClient.stream``), on the same prompts, greedy, same max_tokens.

The server runs as its own process, as it is deployed; the SDK runs in this one, on its
own copy of the model. Runs alternate (SDK, HTTP, HTTP with ``logprobs=5``, and HTTP read
with httpx and json alone, in a rotating order) so that other load on the machine hits all of them alike; the ratios
are medians of adjacent runs on the same prompt. Each HTTP mode has its own server, so
every model sees the same sequence of prompts (a prompt just evaluated would otherwise
be found in the KV cache, and its next time to first token would flatter).

    python bench/device_http.py [--rounds 2] [--tokens 64] [--prompts 4]

Prints a table, writes bench/results/device_http.json and device_http.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _results import RESULTS
from local_decode import PROMPTS

MODES = ("sdk", "http", "http+top5", "http-raw")


def _rates(started: float, arrivals: list[float], tokens: int) -> dict[str, float]:
    """Time to first token and decode tokens/s (tokens after the first, over the time
    after the first) of one run."""
    first, last = arrivals[0], arrivals[-1]
    return {
        "ttft_s": first - started,
        "decode_tok_s": (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0,
        "tokens": tokens,
    }


async def _sdk_run(client: Any, prompt: str, n: int) -> dict[str, float]:
    started = time.perf_counter()
    arrivals = []
    async with client.stream(prompt, max_tokens=n, temperature=0) as stream:
        async for chunk in stream:
            if chunk.token_id >= 0:
                arrivals.append(time.perf_counter())
    return _rates(started, arrivals, len(arrivals)) | {"text": stream.result.text}


async def _http_run(oai: Any, model: str, prompt: str, n: int, top: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    arrivals: list[float] = []
    text = []
    tokens = 0
    stream = await oai.completions.create(
        model=model, prompt=prompt, max_tokens=n, temperature=0, stream=True,
        stream_options={"include_usage": True}, logprobs=top,
    )  # fmt: skip
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and (chunk.choices[0].text or chunk.choices[0].logprobs):
            arrivals.append(time.perf_counter())
            text.append(chunk.choices[0].text)
    return _rates(started, arrivals, tokens) | {"text": "".join(text)}


async def _raw_run(http: Any, url: str, model: str, prompt: str, n: int) -> dict[str, Any]:
    """The same request read with httpx and json alone: the server's own cost, without
    the openai client's (on this 2-core machine the client takes CPU from the model)."""
    started = time.perf_counter()
    arrivals: list[float] = []
    text = []
    tokens = 0
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    async with http.stream("POST", f"{url}/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if event["choices"] and event["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
                text.append(event["choices"][0]["text"])
    return _rates(started, arrivals, tokens) | {"text": "".join(text)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(port: int, threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EDGECLOUD_DEVICE__MODEL__N_THREADS": str(threads),
           "EDGECLOUD_DEVICE__HTTP__PORT": str(port)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", "from edgecloud.cli import main; main()", "device", "serve"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("edgecloud device serve exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("edgecloud device serve did not start")


async def _bench(args: argparse.Namespace, ports: dict[str, int]) -> dict[str, Any]:
    import openai

    from edgecloud import AsyncClient

    prompts = PROMPTS[: args.prompts]
    sdk = await AsyncClient.open(n_threads=args.threads)
    oai = {
        mode: openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                                 max_retries=0)
        for mode, port in ports.items() if mode != "http-raw"
    }  # fmt: skip
    model = (await oai["http"].models.list()).data[0].id
    import httpx

    raw = httpx.AsyncClient(timeout=120)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    same = 0
    try:
        for rnd in range(args.rounds + 1):  # round 0 warms both up and is not counted
            for i, prompt in enumerate(prompts):
                k = (rnd + i) % len(MODES)
                got: dict[str, dict[str, Any]] = {}
                for mode in MODES[k:] + MODES[:k]:
                    if mode == "sdk":
                        got[mode] = await _sdk_run(sdk, prompt, args.tokens)
                    elif mode == "http-raw":
                        url = f"http://127.0.0.1:{ports[mode]}/v1"
                        got[mode] = await _raw_run(raw, url, model, prompt, args.tokens)
                    else:
                        top = 5 if mode == "http+top5" else None
                        got[mode] = await _http_run(oai[mode], model, prompt, args.tokens, top)
                if rnd:
                    same += got["sdk"]["text"] == got["http"]["text"]
                    for mode in MODES:
                        runs[mode].append({"prompt": i, **got[mode]})
    finally:
        for client in oai.values():
            await client.close()
        await raw.aclose()
        await sdk.aclose()
    return {"runs": runs, "identical_greedy_texts": f"{same}/{args.rounds * len(prompts)}"}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console()
    load_before = os.getloadavg()
    ports = {mode: _free_port() for mode in MODES[1:]}
    servers = [_start_server(port, args.threads) for port in ports.values()]
    try:
        out = asyncio.run(_bench(args, ports))
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    runs = out["runs"]

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    def pair(mode: str, key: str, fn: Any) -> float:
        return statistics.median(
            fn(h[key], s[key]) for h, s in zip(runs[mode], runs["sdk"], strict=True)
        )

    modes = {}
    for mode in MODES:
        modes[mode] = {
            "decode_tok_s": med(mode, "decode_tok_s"),
            "ttft_ms": med(mode, "ttft_s") * 1000,
            "tokens": sum(r["tokens"] for r in runs[mode]),
        }
        if mode != "sdk":
            modes[mode]["decode_ratio"] = pair(mode, "decode_tok_s", lambda h, s: h / s)
            modes[mode]["ttft_overhead_ms"] = pair(mode, "ttft_s", lambda h, s: (h - s) * 1000)
    result = {
        "model": "gemma-3-270m-q4_k_m (embedded default)",
        "threads": args.threads,
        "new_tokens": args.tokens,
        "rounds": args.rounds,
        "prompts": args.prompts,
        "client": "openai (official), AsyncOpenAI, stream=True, completions; http-raw: httpx + json",
        "server": "edgecloud device serve (its own process per HTTP mode), uvicorn + FastAPI",
        "modes": modes,
        "decode_ratio": modes["http"]["decode_ratio"],
        "ttft_overhead_ms": modes["http"]["ttft_overhead_ms"],
        "identical_greedy_texts": out["identical_greedy_texts"],
        "runs": {
            m: [{k: v for k, v in r.items() if k != "text"} for r in rs] for m, rs in runs.items()
        },
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "targets": {"decode_ratio_min": 0.95},
    }
    result["meets_targets"] = result["decode_ratio"] >= 0.95

    table = Table(title=f"OpenAI endpoint vs SDK in-process: {args.tokens} tokens, greedy, "
                        f"{args.threads} threads, {args.prompts} prompts x {args.rounds} rounds")  # fmt: skip
    for col in ("", "decode tok/s", "decode ratio vs SDK", "TTFT ms", "TTFT overhead ms"):
        table.add_column(col, justify="right")
    labels = {"sdk": "SDK AsyncClient.stream", "http": "HTTP (openai client)",
              "http+top5": "HTTP, logprobs=5", "http-raw": "HTTP (httpx + json)"}  # fmt: skip
    for mode, m in modes.items():
        table.add_row(
            labels[mode], f"{m['decode_tok_s']:.1f}",
            f"{m['decode_ratio']:.3f}" if "decode_ratio" in m else "1",
            f"{m['ttft_ms']:.1f}",
            f"{m['ttft_overhead_ms']:+.1f}" if "ttft_overhead_ms" in m else "",
        )  # fmt: skip
    console.print(table)
    console.print(f"identical greedy texts SDK vs HTTP: {result['identical_greedy_texts']}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "device_http.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, labels, RESULTS / "device_http.png")
    console.print(f"wrote {RESULTS / 'device_http.json'} and device_http.png; "
                  f"meets targets: {result['meets_targets']}")  # fmt: skip


def _plot(result: dict[str, Any], labels: dict[str, str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = result["modes"]
    names = [labels[m].replace(" (", "\n(").replace(", ", ",\n") for m in modes]
    colors = ["#2b7bba", "#888888", "#d95f02", "#66a61e"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars = left.bar(names, [m["decode_tok_s"] for m in modes.values()], color=colors)
    left.bar_label(bars, fmt="%.1f")
    left.set_ylabel("decode tokens / s (median)")
    bars = right.bar(names, [m["ttft_ms"] for m in modes.values()], color=colors)
    right.bar_label(bars, fmt="%.0f")
    right.set_ylabel("time to first token, ms (median)")
    fig.suptitle(
        f"OpenAI endpoint vs SDK: {result['new_tokens']} tokens, greedy, {result['threads']} "
        f"threads; decode ratio {result['decode_ratio']:.3f}, TTFT overhead "
        f"{result['ttft_overhead_ms']:+.1f} ms"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
