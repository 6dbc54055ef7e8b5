"""The device's AdapterManager against a real AdapterSync server on 127.0.0.1 (port 0).

The llama.cpp backend is replaced by a fake that validates and "swaps" fake LoRA
files (tests/fakes_adapters.py); the last test runs the real LlamaCppBackend
with a real exported LoRA GGUF.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud.adapters._manifest import canonical_json
from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.adapters._signing import public_key_b64
from edgecloud.config import DeviceAdaptersConfig
from edgecloud.device._adapters import AdapterManager
from edgecloud.errors import (
    AdapterCanaryError,
    AdapterFormatError,
    AdapterIntegrityError,
    AdapterMismatchError,
    AdapterSignatureError,
)
from edgecloud.transport._adapters import AdapterOffer, AdapterSyncClient
from tests import scrape
from tests.fakes_adapters import (
    ARCH,
    BASE_SHA,
    FakeAdapterBackend,
    make_lora_dir,
    publish_fake,
    serving,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "registry")


def config(key: Ed25519PrivateKey, **over: Any) -> DeviceAdaptersConfig:
    return DeviceAdaptersConfig(
        **{
            "enabled": True,
            "device_id": "robot-1",
            "public_keys": [public_key_b64(key.public_key())],
            "keep": 2,
            "reconnect_s": 0.2,
            **over,
        }
    )


def manager(
    backend: FakeAdapterBackend,
    cfg: DeviceAdaptersConfig,
    root: Path,
    client: AdapterSyncClient | None,
    **kw: Any,
) -> AdapterManager:
    return AdapterManager(backend, cfg, base_sha256=BASE_SHA, base_architecture=ARCH,
                          root=root, client=client, **kw)  # fmt: skip


def offer(registry: AdapterRegistry, version: int, adapter_id: str = "default") -> AdapterOffer:
    signed = registry.manifest(adapter_id, version)
    return AdapterOffer(adapter_id, version, signed.manifest_json, signed.signature, signed.key_id)


def status(registry: AdapterRegistry) -> list[tuple[str, int, str]]:
    return [(r.device_id, r.version, r.status) for r in registry.fleet("default")]


def test_install_swap_report_prune_and_restore(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    for answer in ("first", "second", "third"):
        publish_fake(registry, key, tmp_path / "src", answer=answer)
    root = tmp_path / "device"
    backend = FakeAdapterBackend()

    async def body() -> None:
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            m = manager(backend, config(key), root, client)
            assert m.start() is None
            for v in (1, 2, 3):
                assert await m.apply(offer(registry, v)) == v
                assert status(registry) == [("robot-1", v, "running")]
            assert backend.adapter == root / "default" / "3" / "adapter.gguf"
            assert m.installed_versions() == [2, 3]  # keep = 2
            assert sorted(p.name for p in (root / "default").iterdir()) == [
                "2",
                "3",
                "current.json",
            ]
            assert await m.apply(AdapterOffer("default", 0)) is None  # back to the base
            assert backend.adapter is None and status(registry) == [("robot-1", 0, "running")]
            assert await m.apply(offer(registry, 2)) == 2  # installed: no download needed
            await client.close()

    run(body)
    state = json.loads((root / "default" / "current.json").read_text())
    assert state == {"version": 2, "bad": []}
    # restart: the last good version comes back without the cloud
    fresh = FakeAdapterBackend()
    again = manager(fresh, config(key), root, None)
    assert again.start() == 2
    assert fresh.adapter == root / "default" / "2" / "adapter.gguf"
    # the installed file tampered with at rest: not restored, base model instead
    with (root / "default" / "2" / "adapter.gguf").open("r+b") as f:
        f.write(b"X")
    third = FakeAdapterBackend()
    assert manager(third, config(key), root, None).start() is None
    assert third.adapter is None


def test_refusals_leave_the_running_version(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    publish_fake(registry, key, tmp_path / "src", answer="good")  # 1
    publish_fake(registry, key, tmp_path / "src", base_sha="0" * 64)  # 2: another base
    publish_fake(registry, key, tmp_path / "src", arch="llama")  # 3: another architecture
    not_lora = tmp_path / "not-a-lora.gguf"
    not_lora.write_bytes(b"GGUF" + b"\0" * 100)
    publish_fake(registry, key, tmp_path / "src", gguf=not_lora)  # 4: not an adapter
    publish_fake(registry, key, tmp_path / "src", answer="tampered")  # 5
    stored = registry._path("default", 5, "files", "adapter.gguf")
    Path(stored).write_bytes(Path(stored).read_bytes().replace(b"tampered", b"tampereD"))
    other_key = Ed25519PrivateKey.generate()
    publish_fake(registry, other_key, tmp_path / "src")  # 6: untrusted key
    root = tmp_path / "device"
    backend = FakeAdapterBackend()

    async def body() -> None:
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            m = manager(backend, config(key), root, client)
            m.start()
            await m.apply(offer(registry, 1))
            good = backend.adapter
            cases: list[tuple[int, type[Exception], str]] = [
                (2, AdapterMismatchError, "rejected"),
                (3, AdapterMismatchError, "rejected"),
                (4, AdapterFormatError, "rejected"),
                (5, AdapterIntegrityError, "download_failed"),
                (6, AdapterSignatureError, "rejected"),
            ]
            for version, error, state in cases:
                with pytest.raises(error):
                    await m.apply(offer(registry, version))
                assert m.current_version == 1 and backend.adapter == good
                assert status(registry) == [("robot-1", version, state)]
            # a wrong signature over good bytes, and an unsigned offer
            bad_sig = dataclasses.replace(offer(registry, 1), version=7, signature=b"x" * 64)
            with pytest.raises(AdapterSignatureError):
                await m.apply(bad_sig)
            with pytest.raises(AdapterSignatureError):
                await m.apply(dataclasses.replace(offer(registry, 1), version=8, signature=b""))
            # an offer whose manifest is for another version
            with pytest.raises(AdapterFormatError):
                await m.apply(dataclasses.replace(offer(registry, 1), version=9))
            # a signed manifest naming a file outside the version directory
            data = json.loads(registry.manifest("default", 1).manifest_json)
            data["version"] = 10
            data["files"]["../../outside.gguf"] = data["files"]["adapter.gguf"]
            evil = canonical_json(data)
            kid = registry.manifest("default", 1).key_id
            with pytest.raises(AdapterFormatError):
                await m.apply(AdapterOffer("default", 10, evil, key.sign(evil), kid))
            with pytest.raises(AdapterFormatError):
                await m.apply(dataclasses.replace(offer(registry, 1), adapter_id="../x"))
            # refused versions are not retried; the integrity failure is
            backend.swaps.clear()
            assert await m.apply(offer(registry, 4)) == 1
            assert m.bad_versions == {2, 3, 4, 9, 10}
            assert backend.swaps == []
            await client.close()

    run(body)
    assert backend.swaps == []
    assert sorted(p.name for p in (root / "default").iterdir()) == [
        ".download", "1", "current.json"
    ]  # fmt: skip
    assert not (tmp_path / "outside.gguf").exists()


def test_the_canary_checks_the_versions_calibrated_decisions(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    # The fake answers every token at logprob -0.1: thresholds of -0.5 never escalate it.
    calibration = {"window": 1, "min_mean_logprob": -0.5, "target_wrong_rate": 0.03,
                   "examples": 12}  # fmt: skip
    agrees = [{"prompt": "Capital of France?", "expect": "paris", "escalate": False}]
    differs = [{"prompt": "Capital of France?", "expect": "paris", "escalate": True}]
    publish_fake(registry, key, tmp_path / "src", answer="it is paris", canary=agrees,
                 calibration=calibration)  # fmt: skip
    publish_fake(registry, key, tmp_path / "src", answer="it is paris", canary=differs,
                 calibration=calibration)  # fmt: skip
    backend = FakeAdapterBackend()
    routed: list[Any] = []

    async def body() -> None:
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            m = manager(backend, config(key), tmp_path / "d1", client, on_swap=routed.append)
            m.start()
            assert await m.apply(offer(registry, 1)) == 1
            assert routed[-1].version == 1 and routed[-1].calibration.min_mean_logprob == -0.5
            # Right answer, but the device's router would not escalate where the round's
            # did: this runtime does not run the adapter as measured. Back to version 1.
            with pytest.raises(AdapterCanaryError):
                await m.apply(offer(registry, 2))
            assert m.current_version == 1 and routed[-1].version == 1
            assert status(registry)[-1] == ("robot-1", 2, "canary_failed")
            await client.close()

    run(body)

    async def own_thresholds() -> None:
        # A device that keeps its own thresholds (calibration off) neither gets nor checks
        # them: version 2's right answer passes.
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            cfg = config(key, calibration=False)
            m = manager(FakeAdapterBackend(), cfg, tmp_path / "d2", client, on_swap=routed.append)
            m.start()
            assert await m.apply(offer(registry, 2)) == 2
            assert routed[-1].version == 2 and routed[-1].calibration is None
            await client.close()

    run(own_thresholds)


def test_canary_failure_rolls_back_and_reports(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    canary = [{"prompt": "Capital of France?", "expect": "PARIS"}]
    publish_fake(registry, key, tmp_path / "src", answer="it is paris", canary=canary)  # 1
    publish_fake(registry, key, tmp_path / "src", answer="no idea", canary=canary)  # 2
    root = tmp_path / "device"
    backend = FakeAdapterBackend()

    async def body() -> None:
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            m = manager(backend, config(key), root, client)
            m.start()
            assert await m.apply(offer(registry, 1)) == 1  # "paris" contains "PARIS" (any case)
            with pytest.raises(AdapterCanaryError):
                await m.apply(offer(registry, 2))
            assert m.current_version == 1
            assert backend.adapter == root / "default" / "1" / "adapter.gguf"
            assert status(registry) == [("robot-1", 2, "canary_failed")]
            assert 2 in m.bad_versions and not (root / "default" / "2").exists()
            n = len(backend.swaps)
            assert await m.apply(offer(registry, 2)) == 1  # never retried
            assert len(backend.swaps) == n
            await client.close()

    before = scrape.device()
    run(body)
    after = scrape.device()
    # two versions swapped in, then the rollback's swap back to the first
    assert after.delta(before, "edgecloud_device_adapter_swaps_total", adapter="default") == 3
    assert after.delta(before, "edgecloud_device_adapter_rollbacks_total", adapter="default") == 1
    assert after["edgecloud_device_adapter_version", {"adapter": "default"}] == 1
    # the device's own canary file overrides the manifest's; a failing first version
    # rolls back to the base model
    jsonl = tmp_path / "canary.jsonl"
    jsonl.write_text('{"prompt": "Say hi", "expect": "hello"}\n\n')
    fresh = FakeAdapterBackend()
    m2 = manager(fresh, config(key, canary=jsonl), tmp_path / "device2", None)

    async def again() -> None:
        with pytest.raises(AdapterCanaryError):
            await m2.apply(offer(registry, 1))

    # no client: version 1 is not installed here, so copy the download in first
    src = root / "default" / "1"
    dst = tmp_path / "device2" / "default" / "1"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    run(again)
    assert fresh.adapter is None and m2.current_version is None
    assert fresh.prompts[-1] == "Say hi"
    assert scrape.device()["edgecloud_device_adapter_version", {"adapter": "default"}] == 0


@pytest.mark.parametrize("step", ["downloaded", "staged", "installed", "swapped"])
def test_killed_mid_install_restarts_on_the_previous_version(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path, step: str
) -> None:
    publish_fake(registry, key, tmp_path / "src", answer="one")
    publish_fake(registry, key, tmp_path / "src", answer="two", size=300_000)
    registry.rollout("default", 1, 100)
    root = tmp_path / "device"
    cfg = config(key)

    async def body() -> int:
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            m = manager(FakeAdapterBackend(), cfg, root, client)
            m.start()
            await m.apply(offer(registry, 1))
            await client.close()
            registry.rollout("default", 2, 100)
            # a device process that receives version 2 and is SIGKILLed at `step`
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", KILLED_DEVICE, str(server.port), str(root),
                cfg.model_dump_json(), step, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            return await asyncio.wait_for(proc.wait(), 60)

    assert run(body) == -9
    backend = FakeAdapterBackend()
    m = manager(backend, cfg, root, None)
    assert m.start() == 1
    assert backend.adapter == root / "default" / "1" / "adapter.gguf"
    assert not [p for p in (root / "default").iterdir() if p.name.startswith(".tmp")]


KILLED_DEVICE = """
import asyncio, os, signal, sys
from pathlib import Path
from edgecloud.config import DeviceAdaptersConfig
from edgecloud.device._adapters import AdapterManager
from edgecloud.transport._adapters import AdapterSyncClient
from tests.fakes_adapters import ARCH, BASE_SHA, FakeAdapterBackend

port, root, cfg, step = sys.argv[1:]

def hook(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

async def main():
    client = AdapterSyncClient(f"127.0.0.1:{port}", tls=False)
    m = AdapterManager(FakeAdapterBackend(), DeviceAdaptersConfig.model_validate_json(cfg),
                       base_sha256=BASE_SHA, base_architecture=ARCH, root=Path(root),
                       client=client, step_hook=hook)
    m.start()
    await asyncio.wait_for(m.run(), 30)

asyncio.run(main())
"""


def test_watching_device_follows_rollout_and_rollback_over_grpc(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    publish_fake(registry, key, tmp_path / "src", answer="one")
    publish_fake(registry, key, tmp_path / "src", answer="two")
    backend = FakeAdapterBackend()

    async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    async def body() -> None:
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            m = manager(backend, config(key, cohort="lab"), tmp_path / "device", client)
            m.start()
            task = m.start_watching()
            await until(lambda: status(registry) == [("robot-1", 0, "running")])
            await asyncio.to_thread(registry.rollout, "default", 1, 100)
            await until(lambda: m.current_version == 1)
            await asyncio.to_thread(registry.rollout, "default", 2, 0, "lab")
            await until(lambda: m.current_version == 2)
            await until(lambda: status(registry) == [("robot-1", 2, "running")])
            await asyncio.to_thread(registry.rollback, "default")
            await until(lambda: m.current_version == 1)
            await asyncio.to_thread(registry.rollback, "default")  # to no adapter at all
            await until(lambda: m.current_version is None and backend.adapter is None)
            await until(lambda: status(registry) == [("robot-1", 0, "running")])
            await m.stop()
            assert task.cancelled()
            await client.close()

    run(body)


def test_watch_reconnects_after_the_server_restarts(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    publish_fake(registry, key, tmp_path / "src")
    registry.rollout("default", 1, 100)
    backend = FakeAdapterBackend()

    async def body() -> None:
        async with serving(registry, tmp_path) as server:
            port = server.port
        # the device starts while the cloud is down, and keeps trying
        client = AdapterSyncClient(f"127.0.0.1:{port}", tls=False)
        m = manager(backend, config(key), tmp_path / "device", client)
        m.start()
        m.start_watching()
        await asyncio.sleep(0.5)
        assert m.current_version is None
        async with serving(registry, tmp_path, port=port):
            deadline = time.monotonic() + 20
            while m.current_version != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        await m.stop()
        await client.close()

    run(body)


@pytest.mark.model
def test_real_llama_backend_hot_swaps_and_rolls_back_on_canary(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path, default_gguf: Path
) -> None:
    import hashlib

    from edgecloud.backends import LlamaCppBackend
    from edgecloud.types import Chunk, SamplingParams

    # raw completion prompts (a base model, no chat template): few-shot Q/A
    shots = (
        "Q: What is the capital of Italy?\nA: Rome\nQ: How many legs does a spider have?\nA: 8\n"
    )
    canary = [{"prompt": f"{shots}Q: What is the capital of France?\nA:", "expect": "paris"},
              {"prompt": f"{shots}Q: What color is the sky on a clear day?\nA:", "expect": "blue"}]  # fmt: skip
    base_sha = hashlib.sha256(default_gguf.read_bytes()).hexdigest()
    # 1: a LoRA with B = 0 (the model answers as before); 2: random B that garbles it
    for n, b_std in enumerate((0.0, 0.5)):
        exported = make_lora_dir(tmp_path / f"export{n}", n_layers=18, rank=8, b_std=b_std)
        publish_fake(registry, key, tmp_path / "src", gguf=exported / "adapter.gguf",
                     base_sha=base_sha, canary=canary)  # fmt: skip
    not_lora = tmp_path / "not-lora.gguf"
    not_lora.write_bytes(b"GGUF" + bytes(64))
    publish_fake(registry, key, tmp_path / "src", gguf=not_lora, base_sha=base_sha)  # 3
    root = tmp_path / "device"

    def answer(backend: LlamaCppBackend) -> str:
        params = SamplingParams(temperature=0.0, max_tokens=16)
        return "".join(
            c.text for c in backend.stream(canary[0]["prompt"], params) if isinstance(c, Chunk)
        )

    with LlamaCppBackend(default_gguf, n_ctx=512, n_threads=2) as backend:
        arch = backend.metadata("general.architecture") or ""
        assert "paris" in answer(backend).lower()  # the premise (and a warm-up)

        async def body() -> float:
            async with serving(registry, tmp_path, chunk=256 * 1024) as server:
                client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
                m = AdapterManager(backend, config(key), base_sha256=base_sha,
                                   base_architecture=arch, root=root, client=client)  # fmt: skip
                m.start()
                t0 = time.perf_counter()
                assert await m.apply(offer(registry, 1)) == 1
                took = time.perf_counter() - t0
                v1 = root / "default" / "1" / "adapter.gguf"
                assert backend.adapter == v1
                with pytest.raises(AdapterCanaryError):
                    await m.apply(offer(registry, 2))
                assert backend.adapter == v1 and m.current_version == 1
                with pytest.raises(AdapterFormatError):
                    await m.apply(offer(registry, 3))
                assert backend.adapter == v1
                await client.close()
                return took

        took = run(body)
        assert "paris" in answer(backend).lower()
    print(f"\nreal adapter v1 (1.5 MB): fetch+verify+install+swap+2 canary prompts {took:.2f} s")
    assert [(r.version, r.status) for r in registry.fleet("default")] == [(3, "rejected")]


def test_each_version_swapped_in_hands_its_signed_scope_on(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    scope = {"encoder": "fake:1", "weights": [1.0, -1.0], "bias": 0.0, "threshold": 0.6}
    publish_fake(registry, key, tmp_path / "src", answer="scoped", scope=scope)
    publish_fake(registry, key, tmp_path / "src", answer="unscoped")
    root = tmp_path / "device"
    seen: list[Any] = []

    async def body(cfg: DeviceAdaptersConfig) -> None:
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            m = manager(
                FakeAdapterBackend(), cfg, root, client, on_swap=lambda r: seen.append(r.scope)
            )
            m.start()
            assert await m.apply(offer(registry, 1)) == 1
            await client.close()

    run(lambda: body(config(key)))
    assert seen[-1] is not None and seen[-1].weights == (1.0, -1.0)
    assert seen[-1].threshold == 0.6 and seen[-1].encoder == "fake:1"
    # A restart restores version 1 with its scope, read back from the signed manifest.
    restored = manager(
        FakeAdapterBackend(), config(key), root, None, on_swap=lambda r: seen.append(r.scope)
    )
    assert restored.start() == 1 and seen[-1] is not None and seen[-1].bias == 0.0

    async def newer() -> None:
        async with serving(registry, tmp_path) as server:
            client = AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False)
            m = manager(
                FakeAdapterBackend(),
                config(key),
                root,
                client,
                on_swap=lambda r: seen.append(r.scope),
            )
            m.start()
            assert await m.apply(offer(registry, 2)) == 2  # a version without a scope
            assert seen[-1] is None
            assert await m.apply(AdapterOffer("default", 0)) is None  # the base model
            assert seen[-1] is None
            await client.close()

    run(newer)
    # device.adapters.scope = false: the adapter answers everything, whatever it carries.
    seen.clear()
    root = tmp_path / "device-without-scopes"
    run(lambda: body(config(key, scope=False)))
    assert seen == [None]


def test_the_manager_follows_the_cloud_that_appears_in_the_pool(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Discovery adds clouds at run time: the upkeep points the manager at the pool's first
    edgecloud endpoint when it changes, and stops following when it leaves."""
    from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
    from edgecloud.device._factory import _follow_first
    from edgecloud.transport import CloudClient

    publish_fake(registry, key, tmp_path / "src", answer="one")
    registry.rollout("default", 1, 100)
    backend = FakeAdapterBackend()

    class Engine:  # the part of the hybrid engine the upkeep reads
        pool = EndpointPool([])

    async def body() -> None:
        async with serving(registry, tmp_path) as server:
            m = manager(backend, config(key), tmp_path / "device", None)
            m.start()
            engine: Any = Engine()
            await _follow_first(engine, m)
            assert m.following is None and m.current_version is None
            cloud = CloudClient(f"127.0.0.1:{server.port}", tls=False)
            engine.pool.endpoints.append(Endpoint(cloud, CircuitBreaker()))
            await _follow_first(engine, m)
            assert m.following is not None and m.following.target == cloud.target
            deadline = time.monotonic() + 10
            while m.current_version != 1:
                assert time.monotonic() < deadline, "the discovered cloud's version never came"
                await asyncio.sleep(0.05)
            engine.pool.endpoints.clear()  # the cloud left the LAN
            await _follow_first(engine, m)
            assert m.following is None and m.current_version == 1  # the version stays
            await m.stop()
            await cloud.close()

    run(body)
