"""Discovery latency: from a cloud appearing on the LAN to a device using it.

On loopback only (zeroconf bound to 127.0.0.1), with the real cloud service in this
process and a one-token scripted engine (no model: this measures discovery, not
inference). Per trial, the device is already browsing (``DiscoveredEndpoints`` over an
empty pool) when the cloud starts; timed from the start of ``CloudServer.start`` (it
listens, then announces itself) to

* ``registered``: the announcement is registered (the name check and zeroconf's
  probing take about 3 s by the mDNS rules; the first announcement goes out before the
  registration call returns);
* ``found``: the service passed the device's checks (health) and joined the pool;
* ``first answer``: the first escalation streamed from it completed.

The baseline is the strongest alternative, a configured endpoint: the same service at
its known address, polled from the same moment until its health check passes, then
asked the same request.

    python bench/discovery.py [--trials 5]

Prints a table; writes bench/results/discovery.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from _results import RESULTS

LO = ["127.0.0.1"]


class OneToken:
    """A cloud engine that answers every request with one token, at once."""

    @property
    def info(self) -> Any:
        from edgecloud.cloud import BackendInfo

        return BackendInfo("bench", "one-token", (), "nowhere", "none")

    def load_snapshot(self) -> Any:
        from edgecloud.cloud import LoadSnapshot

        return LoadSnapshot(0, 0, 4, 0)

    async def generate(self, request: Any) -> AsyncGenerator[Any, None]:
        from edgecloud.types import Chunk, Finish

        yield Chunk("ok", 1, -0.1, 0.1, "cloud", 0)
        yield Finish("stop", 1, 1)

    async def aclose(self) -> None:
        return None


async def _answer(client: Any) -> None:
    async for _ in client.stream("ping", max_tokens=1):
        pass


async def _static(port: int, start: float) -> tuple[float, float]:
    """A configured endpoint at the known address, polled from ``start`` until it answers
    its health check: (ms to health, ms to the first answer)."""
    from edgecloud.errors import TransportError
    from edgecloud.transport import CloudClient

    client = CloudClient(f"127.0.0.1:{port}", tls=False, max_attempts=1)
    try:
        while True:
            try:
                if await client.health(timeout_s=1):
                    break
            except TransportError:
                pass
            await asyncio.sleep(0.005)
        healthy = time.perf_counter()
        await _answer(client)
        return (healthy - start) * 1000, (time.perf_counter() - start) * 1000
    finally:
        await client.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def trial(tmp: Path, i: int) -> dict[str, float]:
    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.cloud import CloudServer, RecordStore
    from edgecloud.config import CloudConfig, DeviceCloudConfig
    from edgecloud.device._discovered import DiscoveredEndpoints
    from edgecloud.device._endpoints import EndpointPool
    from edgecloud.discovery import DeviceDiscoveryConfig

    stype = f"_ecb{uuid.uuid4().hex[:8]}._tcp.local."
    where = tmp / str(i)
    where.mkdir()
    port = _free_port()
    cloud_cfg = CloudConfig.model_validate({
        "insecure": True, "port": port,
        "discovery": {"advertise": True, "interfaces": LO, "service_type": stype,
                      "name": f"bench-{i}"},
    })  # fmt: skip
    device_cfg = DeviceDiscoveryConfig(enabled=True, interfaces=LO, service_type=stype)
    pool = EndpointPool([])
    async with DiscoveredEndpoints(pool, device_cfg, DeviceCloudConfig()) as found:
        start = time.perf_counter()
        static = asyncio.ensure_future(_static(port, start))
        server = await CloudServer.start(
            OneToken(), cloud_cfg, records=RecordStore(where / "records.db"),
            registry=AdapterRegistry(str(where / "registry")),
        )  # fmt: skip
        registered = time.perf_counter()
        try:
            await found.wait_for(1, timeout_s=30)
            used = time.perf_counter()
            await _answer(pool.endpoints[0].client)
            answered = time.perf_counter()
            static_health, static_answer = await static
        finally:
            await server.stop(0)
    return {
        "registered_ms": (registered - start) * 1000,
        "found_ms": (used - start) * 1000,
        "first_answer_ms": (answered - start) * 1000,
        "static_health_ms": static_health,
        "static_first_answer_ms": static_answer,
    }


async def main(trials: int) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecloud-bench.") as tmp:
        for i in range(trials):
            rows.append(await trial(Path(tmp), i))
    keys = list(rows[0])
    summary = {k: {"p50": statistics.median(r[k] for r in rows),
                   "max": max(r[k] for r in rows)} for k in keys}  # fmt: skip
    ratio = summary["first_answer_ms"]["p50"] / summary["static_first_answer_ms"]["p50"]
    return {"trials": rows, "summary": summary, "ratio_first_answer_vs_static": ratio}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(main(args.trials))
    print(f"{'':24}{'p50 ms':>10}{'max ms':>10}")
    for k, v in result["summary"].items():
        print(f"{k:24}{v['p50']:>10.1f}{v['max']:>10.1f}")
    print(f"first answer, discovered vs configured endpoint: "
          f"{result['ratio_first_answer_vs_static']:.0f}x")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "discovery.json").write_text(json.dumps(result, indent=1) + "\n")
