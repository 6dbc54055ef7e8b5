"""Faults between a device and its cloud: a fault-injecting TCP proxy on loopback (drops,
delays, resets, half-open connections, slow reads, a bandwidth cap) and a cloud process
killed mid-generation and mid-upload. After each the device has answered every request
(from the cloud, or finished locally), and the escalation records counted end to end (the
device's EscalationLog against the cloud's record store) are neither lost nor duplicated.

The cloud is the real gRPC service layer over the fake engine (tests/reliability/_fakecloud.py);
the device is the real HybridEngine on a scripted local model. Kills during an adapter
install are tests/integration/test_adapter_manager.py::test_killed_mid_install_restarts_on_the_previous_version,
a device killed mid-upload tests/integration/test_cloud_escalation.py, a cloud killed mid-stream
under the real models tests/integration/test_escalation_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edgecloud.device._hybrid import HybridEngine
from edgecloud.types import Chunk, Finish
from tests.fakes import answer
from tests.integration._cloudproc import stop
from tests.reliability._harness import Fault, FaultProxy, device, start_fake_cloud

CLOUD: dict[str, Any] = {"max_new_tokens": 16, "default_max_tokens": 8}
# A half-open connection heals only when keep-alive finds it dead: about a minute here.
FAULTS = ["drop", "delay", "reset", pytest.param("half_open", marks=pytest.mark.soak),
          "slow_read", "bandwidth"]  # fmt: skip
ASKED = 4


def cloud_ids(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM escalations")]


async def upload_all(engine: HybridEngine, seen: set[str], tries: int = 120) -> None:
    """Upload until the device log is empty, noting every id it held on the way."""
    assert engine.log is not None
    for _ in range(tries):
        seen.update(r.id for r in engine.log.all())
        if not len(engine.log):
            return
        await engine.upload_pending()
        await asyncio.sleep(0.25)  # past the breaker's cooldown
    raise AssertionError(f"{len(engine.log)} records never uploaded")


@pytest.mark.parametrize("fault", FAULTS)
def test_the_device_answers_through_the_fault_and_every_record_arrives_once(
    fault: Fault, tmp_path: Path
) -> None:
    proc, port = start_fake_cloud(tmp_path, CLOUD, token_s=0.02)
    proxy = FaultProxy(port)

    async def scenario() -> tuple[list[tuple[str, Finish]], set[str]]:
        # A silent connection is found dead by keep-alive pings (then 10 s without an
        # answer): ping every second here, not every 30 s, to keep the test short.
        engine = device(proxy.port, tmp_path / "log.db", keepalive_s=1.0)
        seen: set[str] = set()
        try:
            answers = [await answer(engine)]  # a healthy connection first
            proxy.fault = fault
            answers += [await answer(engine) for _ in range(ASKED)]
            # the first upload meets the fault too; then the network heals
            seen.update(r.id for r in engine.log.all())  # type: ignore[union-attr]
            await engine.upload_pending()
            proxy.fault = "pass"
            healed = time.monotonic()
            await upload_all(engine, seen)
            print(f"\n{fault}: uploaded {time.monotonic() - healed:.1f} s after the fault ended")
            return answers, seen
        finally:
            await engine.aclose()

    try:
        answers, seen = asyncio.run(scenario())
    finally:
        proxy.close()
        stop(proc)
    for text, finish in answers:
        assert finish.reason in ("stop", "length") and len(text.split()) >= 3, (text, finish)
        # escalated (and maybe finished locally), or kept local once the breaker opened
        assert finish.route is not None
        assert finish.route.escalated or finish.route.policy == "connectivity", finish.route
    # every escalation logged, uploaded once: no record lost, none stored twice
    assert len(seen) == sum(f.route is not None and f.route.escalated for _, f in answers)
    stored = cloud_ids(tmp_path / "records.db")
    assert sorted(stored) == sorted(seen)
    routes = [f.route for _, f in answers if f.route is not None]
    print(f"\n{fault}: {len(answers)} answers, {sum(r.fallback is not None for r in routes)} "
          f"finished locally, {sum(not r.escalated for r in routes)} kept local, "
          f"records device {len(seen)} / cloud {len(stored)}")  # fmt: skip


def test_a_cloud_killed_mid_generation_and_mid_upload_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """SIGKILL the cloud at a random token of an answer it streams, then again at a random
    byte of an upload (the proxy caps the bandwidth so that the upload is under way); a
    cloud restarted on the same record store gets every record exactly once."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kill_at_token, kill_at_byte = rng.randint(1, 3), rng.randint(300, 4_000)
    print(f"\nkills: seed {seed}: at cloud token {kill_at_token}, upload byte {kill_at_byte}")
    proc, port = start_fake_cloud(tmp_path, CLOUD, token_s=0.2)
    proxy = FaultProxy(port)
    procs = [proc]

    def restart() -> None:
        new, new_port = start_fake_cloud(tmp_path, CLOUD, token_s=0.005)
        procs.append(new)
        proxy.upstream_port = new_port

    async def scenario() -> dict[str, Any]:
        engine = device(proxy.port, tmp_path / "log.db", timeout_s=5.0)
        r: dict[str, Any] = {"seen": set()}
        try:
            chunks: list[Chunk] = []
            async for ev in engine.stream("Q: count\nA:", _params(), cancel=_scope()):
                if isinstance(ev, Chunk):
                    chunks.append(ev)
                    if sum(c.source == "cloud" for c in chunks) == kill_at_token:
                        procs[-1].send_signal(signal.SIGKILL)
                else:
                    r["killed_finish"] = ev
            r["killed_sources"] = [c.source for c in chunks]
            await asyncio.to_thread(restart)
            r["more"] = [await answer(engine) for _ in range(40)]
            r["seen"].update(x.id for x in engine.log.all())  # type: ignore[union-attr]
            proxy.fault, proxy.rate = "bandwidth", 20_000.0
            before = len(proxy.sent)
            upload = asyncio.create_task(engine.upload_pending(batch=1000))
            while len(proxy.sent) < before + kill_at_byte and not upload.done():
                await asyncio.sleep(0.01)
            procs[-1].send_signal(signal.SIGKILL)
            r["acked_by_killed"] = await upload
            proxy.fault = "pass"
            await asyncio.to_thread(restart)
            await upload_all(engine, r["seen"])
            return r
        finally:
            await engine.aclose()

    try:
        r = asyncio.run(scenario())
    finally:
        proxy.close()
        for p in procs:
            stop(p)
    finish = r["killed_finish"]
    assert "cloud" in r["killed_sources"] and r["killed_sources"][-1] == "local"
    assert finish.route.fallback is not None and finish.reason in ("stop", "length")
    assert all(f.route is not None and f.route.escalated for _, f in r["more"])
    assert r["acked_by_killed"] == 0  # the kill came before the acknowledgement
    assert len(r["seen"]) == 1 + len(r["more"])
    stored = cloud_ids(tmp_path / "records.db")
    assert sorted(stored) == sorted(r["seen"]), "lost or duplicated records"
    print(f"\nkills: {len(r['seen'])} records on the device, {len(stored)} in the cloud store")


def _params() -> Any:
    from edgecloud.types import SamplingParams

    return SamplingParams(max_tokens=8)


def _scope() -> Any:
    from edgecloud.device._hybrid import CancelScope

    return CancelScope()


def test_adapter_downloads_through_faults_leave_a_consistent_store_and_a_verified_version(
    tmp_path: Path,
) -> None:
    """Adapter sync through the fault proxy: a download reset midway, then one on a cut
    network, each fails cleanly with the device still on its last verified version and no
    temporary file left; once the network heals the same offer installs (resumed)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.errors import TransportError
    from edgecloud.transport._adapters import AdapterSyncClient
    from tests.fakes_adapters import FakeAdapterBackend, publish_fake, serving
    from tests.integration.test_adapter_manager import config, manager, offer

    key = Ed25519PrivateKey.generate()
    registry = AdapterRegistry(tmp_path / "registry")
    for answer_, size in (("one", 0), ("two", 400_000), ("three", 400_000)):
        publish_fake(registry, key, tmp_path / "src", answer=answer_, size=size)
    root = tmp_path / "device"
    backend = FakeAdapterBackend()

    def consistent(version: int) -> None:
        assert m.current_version == version
        assert backend.adapter == root / "default" / str(version) / "adapter.gguf"
        assert not [p for p in (root / "default").rglob(".tmp-*")]
        # what runs is what was signed: the manager re-verifies it from disk
        assert manager(FakeAdapterBackend(), config(key), root, None).start() == version

    async def body() -> list[str]:
        async with serving(registry, tmp_path, chunk=16 * 1024) as server:
            proxy = FaultProxy(server.port)
            client = AdapterSyncClient(f"127.0.0.1:{proxy.port}", tls=False)
            nonlocal m
            m = manager(backend, config(key), root, client)
            m.start()
            outcomes = []
            try:
                assert await m.apply(offer(registry, 1)) == 1
                for version, fault in ((2, "reset"), (3, "drop")):
                    proxy.fault, proxy.reset_after = fault, 150_000
                    with pytest.raises(TransportError) as info:
                        await m.apply(offer(registry, version))
                    outcomes.append(f"v{version} {fault}: {type(info.value).__name__}")
                    consistent(version - 1)
                    proxy.fault = "pass"
                    for _ in range(20):  # as AdapterManager.run retries, after reconnect_s
                        with contextlib.suppress(TransportError):
                            assert await m.apply(offer(registry, version)) == version
                            break
                        await asyncio.sleep(0.5)
                    consistent(version)
            finally:
                await client.close()
                proxy.close()
            return outcomes

    m: Any = None
    outcomes = asyncio.run(body())
    print("\nadapter sync:", outcomes)
    assert [r.status for r in registry.fleet("default")] == ["running"]
