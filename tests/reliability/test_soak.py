"""Soak (``--soak``, 10 minutes): devices escalate to one cloud and upload their records
without pause; the cloud process's memory, file descriptors and threads must not grow after
warm-up, and the SQLite files must not grow beyond what the records stored explain.

The cloud is the real gRPC service layer over the fake engine (tests/reliability/_fakecloud.py),
the devices are real HybridEngines (scripted local model, real EscalationLog on SQLite).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from edgecloud.device._hybrid import HybridEngine
from tests.fakes import answer
from tests.integration._cloudproc import stop
from tests.reliability._harness import Gauges, device, gauges, start_fake_cloud
from tests.reliability.test_faults import cloud_ids

SOAK_S = float(os.environ.get("EDGECLOUD_SOAK_SECONDS", "600"))
WARM_S = 60.0
DEVICES = 16
PAUSE_S = 0.1  # between a device's requests: steady traffic that leaves the CPUs some room


def db_bytes(path: Path) -> int:
    """A SQLite database with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 300)
def test_a_long_run_grows_no_memory_fds_threads_or_storage(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    cloud_cfg = {"max_new_tokens": 16, "default_max_tokens": 8, "max_running_sequences": 32}
    proc, port = start_fake_cloud(tmp_path, cloud_cfg, token_s=0.01)
    samples: list[tuple[float, Gauges, Gauges, int, int]] = []
    me = os.getpid()

    async def run_device(engine: HybridEngine, end: float) -> int:
        n = 0
        while time.monotonic() < end:
            text, finish = await answer(engine)
            assert finish.route is not None and finish.route.escalated and text
            n += 1
            await asyncio.sleep(PAUSE_S)
            if n % 20 == 0:
                await engine.upload_pending()
        while len(engine.log):  # type: ignore[arg-type]
            await engine.upload_pending()
        return n

    async def sample(start: float, end: float) -> None:
        while time.monotonic() < end:
            samples.append((time.monotonic() - start, gauges(proc.pid), gauges(me),
                            db_bytes(tmp_path / "records.db"), len(cloud_ids(tmp_path / "records.db"))))  # fmt: skip
            await asyncio.sleep(15)

    async def scenario() -> int:
        engines = [device(port, tmp_path / f"d{i}" / "log.db") for i in range(DEVICES)]
        start = time.monotonic()
        end = start + SOAK_S
        try:
            sampler = asyncio.create_task(sample(start, end))
            counts = await asyncio.gather(*(run_device(e, end) for e in engines))
            await sampler
            return sum(counts)
        finally:
            for e in engines:
                await e.aclose()

    try:
        answers = asyncio.run(scenario())
        end_cloud = gauges(proc.pid)
    finally:
        stop(proc)
    stored = len(cloud_ids(tmp_path / "records.db"))
    device_db = max(db_bytes(tmp_path / f"d{i}" / "log.db") for i in range(DEVICES))
    warm = next(s for s in samples if s[0] >= WARM_S)
    last = samples[-1]
    summary = {
        "seconds": SOAK_S, "devices": DEVICES, "answers": answers, "records_stored": stored,
        "cloud_rss_mb": [round(warm[1].rss / 2**20, 1), round(end_cloud.rss / 2**20, 1)],
        "cloud_fds": [warm[1].fds, end_cloud.fds], "cloud_threads": [warm[1].threads, end_cloud.threads],
        "device_rss_mb": [round(warm[2].rss / 2**20, 1), round(last[2].rss / 2**20, 1)],
        "device_fds": [warm[2].fds, last[2].fds],
        "cloud_db_bytes_per_record": round(db_bytes(tmp_path / "records.db") / max(stored, 1)),
        "largest_device_log_bytes": device_db,
        # seconds, cloud RSS MB, fds, threads, store bytes, records; device RSS MB
        "samples": [[round(t), round(c.rss / 2**20, 1), c.fds, c.threads, b, n, round(d.rss / 2**20, 1)]
                    for t, c, d, b, n in samples],
    }  # fmt: skip
    figures["soak"] = summary
    print("\nsoak:", json.dumps(summary))
    assert stored == answers  # every record reached the cloud, once
    assert end_cloud.rss <= warm[1].rss * 1.10
    assert end_cloud.fds <= warm[1].fds + 4 and end_cloud.threads <= warm[1].threads + 2
    assert last[2].rss <= warm[2].rss * 1.10 and last[2].fds <= warm[2].fds + 4
    # the cloud's store grows by its records (~1 KB each), the devices' logs are emptied
    assert summary["cloud_db_bytes_per_record"] < 4096
    assert device_db < 8 * 2**20
