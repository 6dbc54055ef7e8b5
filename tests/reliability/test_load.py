"""Load: 64 concurrent device streams against one cloud service, and 64 HTTP streams against
one device endpoint, for a fixed time (20 s; 60 s with ``--soak``).

The cloud is the real gRPC service layer (servicer, admission by
``maximum_concurrent_rpcs``, record store) over the fake engine of
tests/reliability/_fakecloud.py, in its own process: 8 tokens at 50 ms each, so the figures
measure the service layer, not a model. Its limits admit 48 calls at once, so 16 of the 64
streams are always over them: those, and only those, may fail, with RESOURCE_EXHAUSTED.
The device endpoint is ``edgecloud device serve`` on the real embedded model, whose
queue (``device.http.max_queue``, 8) refuses the rest with HTTP 429.

Each run asserts: no failure but those, every stream admitted ends with its Finish (or
``[DONE]``), and the server's RSS at the end within 10% of its RSS after 10 s. The p99 time
to first token is printed and recorded (see conftest.py's ``figures``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgecloud.errors import EdgeCloudError, OverloadedError
from edgecloud.transport import CloudClient
from edgecloud.types import Chunk, Finish
from tests.deviceserve import start_device_serve
from tests.integration._cloudproc import stop
from tests.reliability._harness import Gauges, gauges, start_fake_cloud

STREAMS = 64
LIMITS = {"max_running_sequences": 16, "max_queued_requests": 8}  # 48 calls at once
ADMITTED = (LIMITS["max_running_sequences"] + LIMITS["max_queued_requests"]) * 2


def seconds(soak: bool) -> float:
    return 60.0 if soak else 20.0


@dataclass
class Tally:
    """What the streams of one run saw."""

    accepted: int = 0
    completed: int = 0
    refused: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    ttft: list[float] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def start(self, t0: float) -> None:
        self.accepted += 1
        self.ttft.append(time.perf_counter() - t0)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def p99_ms(self) -> float:
        ranked = sorted(self.ttft)
        return 1000 * ranked[min(len(ranked) - 1, int(0.99 * len(ranked)))]

    def summary(self, duration: float, rss: tuple[Gauges, Gauges]) -> dict[str, Any]:
        return {"streams": STREAMS, "seconds": duration, "accepted": self.accepted,
                "completed": self.completed, "refused_over_limit": self.refused,
                "failures": dict(self.failures), "most_in_flight": self.most_in_flight,
                "p99_ttft_ms": round(self.p99_ms(), 1),
                "p50_ttft_ms": round(1000 * sorted(self.ttft)[len(self.ttft) // 2], 1),
                "rss_10s_mb": round(rss[0].rss / 2**20, 1), "rss_end_mb": round(rss[1].rss / 2**20, 1),
                "rss_drift": round(rss[1].rss / rss[0].rss - 1, 4)}  # fmt: skip


async def drive(
    one: Callable[[Tally, int], Awaitable[None]], pid: int, duration: float
) -> tuple[Tally, tuple[Gauges, Gauges]]:
    """Run ``one`` in a loop on each of 64 streams for ``duration``; gauge ``pid`` at 10 s
    and at the end."""
    tally = Tally()
    end = time.monotonic() + duration

    async def stream(i: int) -> None:
        while time.monotonic() < end:
            await one(tally, i)

    async def at_ten() -> Gauges:
        await asyncio.sleep(10)
        return gauges(pid)

    early = asyncio.create_task(at_ten())
    await asyncio.gather(*(stream(i) for i in range(STREAMS)))
    return tally, (await early, gauges(pid))


def check(tally: Tally, rss: tuple[Gauges, Gauges], name: str, duration: float,
          figures: dict[str, Any]) -> None:  # fmt: skip
    summary = tally.summary(duration, rss)
    figures[name] = summary
    print(f"\n{name}: {json.dumps(summary)}")
    assert not tally.failures, tally.failures
    assert tally.completed == tally.accepted > 0 and tally.in_flight == 0
    assert abs(summary["rss_drift"]) <= 0.10, summary


def test_64_device_streams_on_one_cloud_service(
    tmp_path: Path, soak: bool, figures: dict[str, Any]
) -> None:
    proc, port = start_fake_cloud(
        tmp_path, {**LIMITS, "max_new_tokens": 16, "default_max_tokens": 8}, token_s=0.05
    )
    clients: list[CloudClient] = []

    async def one(tally: Tally, i: int) -> None:
        client = clients[i]
        t0 = time.perf_counter()
        tokens, started = 0, False
        try:
            async for ev in client.stream("Q: how are you?\nA:", max_tokens=8):
                if not started:
                    started = True
                    tally.start(t0)
                if isinstance(ev, Chunk):
                    tokens += 1
                elif isinstance(ev, Finish):
                    assert tokens == ev.completion_tokens == 8
                    tally.completed += 1
                    tally.in_flight -= 1
        except OverloadedError:
            assert not started
            tally.refused += 1
            await asyncio.sleep(0.05)
        except EdgeCloudError as exc:
            tally.failures[f"{type(exc).__name__}: {exc}"] += 1

    async def scenario() -> tuple[Tally, tuple[Gauges, Gauges]]:
        clients.extend(CloudClient(f"127.0.0.1:{port}", tls=False, max_attempts=1, timeout_s=30)
                       for _ in range(STREAMS))  # fmt: skip
        try:
            return await drive(one, proc.pid, seconds(soak))
        finally:
            for c in clients:
                await c.close()

    try:
        tally, rss = asyncio.run(scenario())
    finally:
        stop(proc)
    check(tally, rss, "load_grpc_fake_engine", seconds(soak), figures)
    assert tally.most_in_flight <= ADMITTED


def test_64_http_streams_on_one_device_endpoint(
    model_cache: Path, tmp_path: Path, soak: bool, figures: dict[str, Any]
) -> None:
    env = {"EDGECLOUD_CACHE_DIR": str(model_cache), "EDGECLOUD_DEVICE__MODEL__N_THREADS": "2",
           "EDGECLOUD_DEVICE__HTTP__MODEL_NAME": "tiny",
           "EDGECLOUD_DEVICE__LOG__PATH": str(tmp_path / "log.db")}  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    proc, url = start_device_serve(env, log)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4, "temperature": 0, "stream": True}  # fmt: skip

    clients: list[httpx.AsyncClient] = []

    async def one(tally: Tally, i: int) -> None:
        t0 = time.perf_counter()
        try:
            async with clients[0].stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                if r.status_code == 429:
                    tally.refused += 1
                    # as a polite client backs off (a storm of refusals would starve the model)
                    await asyncio.sleep(random.uniform(0.5, 1.5))
                    return
                if r.status_code != 200:
                    tally.failures[f"HTTP {r.status_code}"] += 1
                    return
                started = False
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and not started:
                        started = True
                        tally.start(t0)
                    if line == "data: [DONE]":
                        tally.completed += 1
                        tally.in_flight -= 1
        except httpx.HTTPError as exc:
            tally.failures[type(exc).__name__] += 1

    try:

        async def scenario() -> tuple[Tally, tuple[Gauges, Gauges]]:
            limits = httpx.Limits(max_connections=STREAMS)
            async with httpx.AsyncClient(timeout=60, limits=limits) as http:
                clients.append(http)
                return await drive(one, proc.pid, seconds(soak))

        tally, rss = asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        log.close()
    assert not tally.failures, (tally.failures, (tmp_path / "serve.log").read_text()[-3000:])
    check(tally, rss, "load_http_device_real_model", seconds(soak), figures)
