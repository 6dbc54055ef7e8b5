"""Adapter sync over real gRPC on 127.0.0.1 (port 0): watch, resumable fetch, reports, auth.

The inference backend is never called by these RPCs, so the service runs with a
stand-in object instead of a loaded model; everything else is the real server
(``CloudServer.start``: token interceptor, decode guard, reflection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud._proto.v1 import adapters_pb2 as pb
from edgecloud._proto.v1 import adapters_pb2_grpc as pb_grpc
from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.adapters._signing import SignedManifest, load_public_keys, public_key_b64, verify
from edgecloud.cloud._server import CloudServer
from edgecloud.errors import (
    AdapterIntegrityError,
    AuthError,
    InvalidRequestError,
    UnknownAdapterError,
)
from edgecloud.transport._adapters import AdapterOffer, AdapterSyncClient, partial_path
from tests.fakes_adapters import TOKENS, publish_fake, serving

T = TypeVar("T")
MB = 1 << 20


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "registry")


def sync_client(server: CloudServer, token: str | None = None) -> AdapterSyncClient:
    return AdapterSyncClient(f"127.0.0.1:{server.port}", tls=False, token=token, timeout_s=10)


async def next_offer(stream: AsyncIterator[AdapterOffer], timeout: float = 5.0) -> AdapterOffer:
    return await asyncio.wait_for(anext(stream), timeout)


class Watcher:
    """Follows a watch stream in a task (a timed-out wait must not cancel the stream)."""

    def __init__(self, stream: AsyncIterator[AdapterOffer]) -> None:
        self.queue: asyncio.Queue[AdapterOffer] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump(stream))

    async def _pump(self, stream: AsyncIterator[AdapterOffer]) -> None:
        async for offer in stream:
            await self.queue.put(offer)

    async def next(self, timeout: float = 5.0) -> AdapterOffer:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def test_watch_follows_staged_rollout_cohort_and_rollback(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    m1 = publish_fake(registry, key, tmp_path / "src", answer="one")
    publish_fake(registry, key, tmp_path / "src", answer="two")
    trusted = load_public_keys([public_key_b64(key.public_key())])

    async def body() -> None:
        async with serving(registry, tmp_path) as server, sync_client(server) as c:
            lab = Watcher(c.watch("default", device_id="lab-robot", cohort="lab"))
            field = Watcher(c.watch("default", device_id="field-robot", cohort="field"))
            # nothing rolled out: both run the base model
            assert (await lab.next()).version == 0
            assert (await field.next()).version == 0

            await asyncio.to_thread(registry.rollout, "default", 1, 100)
            offers = [await lab.next(), await field.next()]
            assert [o.version for o in offers] == [1, 1]
            signed = SignedManifest(offers[0].manifest_json, offers[0].signature, offers[0].key_id)
            assert verify(signed, trusted) == m1

            # a staged candidate for the lab cohort only (0 % of everyone else)
            await asyncio.to_thread(registry.rollout, "default", 2, 0, "lab")
            assert (await lab.next()).version == 2
            with pytest.raises(TimeoutError):
                await field.next(timeout=1.5)

            await asyncio.to_thread(registry.rollback, "default")
            assert (await lab.next()).version == 1

            # percent: just short of promotion, every device is in the audience
            await asyncio.to_thread(registry.rollout, "default", 2, 99.999)
            assert {(await lab.next()).version, (await field.next()).version} == {2}
            await lab.close()
            await field.close()

    run(body)


def test_fetch_verifies_resumes_and_reports(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    m = publish_fake(registry, key, tmp_path / "src", size=4 * MB)
    entry = m.files["adapter.gguf"]
    dest = tmp_path / "dl" / "adapter.gguf"
    timings: dict[str, float] = {}

    class Interrupt(Exception):
        pass

    def stop_after_1mb(done: int, total: int) -> None:
        if done >= MB:
            raise Interrupt

    async def body() -> None:
        async with (
            serving(registry, tmp_path, chunk=256 * 1024) as server,
            sync_client(server) as c,
        ):
            args = ("default", 1, "adapter.gguf")
            kw: dict[str, Any] = {"expected_sha256": entry.sha256, "expected_size": entry.size}
            # interrupted download: the bytes so far stay in .partial
            with pytest.raises(Interrupt):
                await c.fetch(*args, dest, progress=stop_after_1mb, **kw)
            assert not dest.exists()
            assert partial_path(dest).stat().st_size == MB
            starts: list[int] = []
            await c.fetch(*args, dest, progress=lambda d, t: starts.append(d), **kw)
            assert starts[0] == MB + 256 * 1024  # resumed at 1 MiB, not at 0
            assert hashlib.sha256(dest.read_bytes()).hexdigest() == entry.sha256
            assert not partial_path(dest).exists()

            # a tampered partial file (wrong bytes before the resume point) is caught
            other = tmp_path / "dl" / "again.gguf"
            partial_path(other).write_bytes(b"\xff" * MB)
            with pytest.raises(AdapterIntegrityError, match="sha256"):
                await c.fetch(*args, other, **kw)
            assert not other.exists() and not partial_path(other).exists()

            # a manifest promising more bytes than the service has: truncated
            with pytest.raises(AdapterIntegrityError, match="truncated"):
                await c.fetch(*args, other, expected_sha256=entry.sha256,
                              expected_size=entry.size + 10)  # fmt: skip
            assert partial_path(other).stat().st_size == entry.size  # kept for a resume

            # measured: a fresh 4 MiB download + sha256 over loopback
            fresh = tmp_path / "dl" / "timed.gguf"
            t0 = time.perf_counter()
            await c.fetch(*args, fresh, **kw)
            timings["fetch_4mib_s"] = time.perf_counter() - t0

            await c.report("default", 1, "running", device_id="robot-9")
            with pytest.raises(UnknownAdapterError):
                await c.fetch("default", 7, "adapter.gguf", tmp_path / "x", **kw)
            with pytest.raises(UnknownAdapterError):
                await c.fetch("default", 1, "nope.bin", tmp_path / "x", **kw)
            for bad in ("../1/manifest.json", "/etc/passwd", "a\\b"):
                with pytest.raises(InvalidRequestError):
                    await c.fetch("default", 1, bad, tmp_path / "x", **kw)
            with pytest.raises(InvalidRequestError):
                await c.fetch("../etc", 1, "adapter.gguf", tmp_path / "x", **kw)

    run(body)
    print(f"\nfetch+verify 4 MiB over loopback: {timings['fetch_4mib_s'] * 1000:.1f} ms")
    assert [(r.device_id, r.version, r.status) for r in registry.fleet("default")] == [
        ("robot-9", 1, "running")
    ]


def test_raw_bad_requests_get_clean_status_codes(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    publish_fake(registry, key, tmp_path / "src")

    async def body() -> None:
        async with (
            serving(registry, tmp_path) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
        ):
            stub = pb_grpc.AdapterSyncStub(ch)  # type: ignore[no-untyped-call]
            cases = [
                (pb.FetchRequest(adapter_id="default", version=1, name="adapter.gguf",
                                 offset=-1), grpc.StatusCode.INVALID_ARGUMENT),
                (pb.FetchRequest(adapter_id="default", version=1, name="adapter.gguf",
                                 offset=1 << 40), grpc.StatusCode.INVALID_ARGUMENT),
                (pb.FetchRequest(adapter_id="", version=1, name="adapter.gguf"),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (pb.FetchRequest(adapter_id="default", version=0, name="adapter.gguf"),
                 grpc.StatusCode.NOT_FOUND),
            ]  # fmt: skip
            for request, code in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in stub.FetchAdapter(request, timeout=5):
                        pass
                assert info.value.code() == code
                assert "Traceback" not in (info.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.WatchAdapters(pb.WatchRequest(adapter_id="x"), timeout=5):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no device id
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ReportAdapter(
                    pb.AdapterReport(adapter_id="default", device_id="d", version=1),
                    timeout=5,
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no status
            # reflection lists the service
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            rstub = reflection_pb2_grpc.ServerReflectionStub(ch)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            names = [
                s.name
                async for r in rstub.ServerReflectionInfo(iter([req]))
                for s in r.list_services_response.service
            ]
            assert "edgecloud.v1.AdapterSync" in names

    run(body)


def test_auth_device_identity_comes_from_the_token(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    publish_fake(registry, key, tmp_path / "src")

    async def body() -> None:
        async with serving(registry, tmp_path, auth=True) as server:
            async with sync_client(server, TOKENS["robot-1"]) as c:
                # robot-1 claims to be robot-2: the report is filed under robot-1
                await c.report("default", 1, "running", device_id="robot-2")
                stream = c.watch("default", device_id="robot-2")
                assert (await next_offer(stream)).version == 0
                await stream.aclose()
            async with sync_client(server) as anonymous:
                with pytest.raises(AuthError):
                    await anonymous.report("default", 1, "running", device_id="robot-1")
                with pytest.raises(AuthError):
                    await next_offer(anonymous.watch("default", device_id="robot-1"))

    run(body)
    assert [r.device_id for r in registry.fleet("default")] == ["robot-1"]


def test_graceful_stop_ends_watch_streams_promptly(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    async def body() -> float:
        async with serving(registry, tmp_path) as server, sync_client(server) as c:
            watcher = Watcher(c.watch("default", device_id="d"))
            assert (await watcher.next()).version == 0
            t0 = time.perf_counter()
            await server.stop(30)  # a long grace: only an ended stream lets it return soon
            took = time.perf_counter() - t0
            await asyncio.wait_for(watcher._task, 5)  # the stream ended (no error)
            return took

    assert run(body) < 5
