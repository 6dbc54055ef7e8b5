"""Closing the sync client leaves nothing pending on its event loop.

A gRPC stream that is cancelled (the adapter watch, a cloud answer, a download) still
has grpc's ``_AioCall._handle_status_once_received`` task pending until grpc's poller
thread hands the call's final status back to the loop, a moment after the channel is
closed. A loop stopped and closed before that moment leaves the task pending, and
Python logs ``Task was destroyed but it is pending!`` when it is collected (at random,
often at interpreter exit). The real cloud server runs on 127.0.0.1 in its own loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud import Client
from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.adapters._signing import public_key_b64
from edgecloud.backends import BackendInfo
from edgecloud.common.aio import LoopThread
from edgecloud.config import Settings
from edgecloud.transport import AdapterSyncClient, CloudClient
from tests.fakes import ScriptedBackend
from tests.fakes_adapters import ARCH, BASE_SHA, publish_fake, serving


class AdaptingBackend(ScriptedBackend):
    """A scripted backend the adapter manager accepts (its model file hashes to BASE_SHA)."""

    def __init__(self, model: Path) -> None:
        super().__init__()
        self._model = model
        self._adapter: Path | None = None

    @property
    def info(self) -> BackendInfo:
        return BackendInfo("fake", "scripted", str(self._model), {})

    @property
    def adapter(self) -> Path | None:
        return self._adapter

    def set_adapter(self, path: Path | None, *, scale: float = 1.0) -> float:
        self._adapter = path
        return 0.0

    def metadata(self, key: str) -> str:
        return ARCH


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[int, Ed25519PrivateKey]]:
    """A real cloud server (adapter sync, no model) with version 1 rolled out to all."""
    key = Ed25519PrivateKey.generate()
    registry = AdapterRegistry(tmp_path / "registry")
    publish_fake(registry, key, tmp_path / "src")
    registry.rollout("default", 1, 100)
    loop = LoopThread("cloud")
    serve = serving(registry, tmp_path)
    server = loop.run(serve.__aenter__())
    try:
        yield server.port, key
    finally:
        loop.run(serve.__aexit__(None, None, None))
        loop.close()


def pending(loop: asyncio.AbstractEventLoop) -> list[str]:
    return [repr(t)[:160] for t in asyncio.all_tasks(loop) if not t.done()]


def destroyed(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()
    return [r.getMessage()[:200] for r in caplog.records if "destroyed" in r.getMessage()]


def test_a_stream_cancelled_just_before_the_loop_closes_leaves_no_task(
    cloud: tuple[int, Ed25519PrivateKey], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")

    async def watch_then_close(port: int) -> None:
        channel = CloudClient(f"127.0.0.1:{port}", tls=False)
        offers = AdapterSyncClient(channel).watch("default", device_id="robot-1")
        assert (await anext(offers)).version == 1  # the stream is up
        await offers.aclose()  # cancels the call
        await channel.close()

    for _ in range(20):  # the race is lost about one time in ten without the fix
        runner = LoopThread()
        runner.run(watch_then_close(cloud[0]))
        runner.close()
        assert pending(runner.loop) == []
        gc.collect()
    assert destroyed(caplog) == []


def test_client_with_cloud_and_adapters_closes_cleanly(
    cloud: tuple[int, Ed25519PrivateKey], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    port, key = cloud
    model = tmp_path / "model.gguf"
    model.write_bytes(b"fake base model")
    for i in range(3):
        settings = Settings(cache_dir=tmp_path / f"cache{i}", device={
            "cloud": {"endpoints": [{"target": f"127.0.0.1:{port}", "tls": False}]},
            "adapters": {"enabled": True, "device_id": "robot-1", "reconnect_s": 0.2,
                         "public_keys": [public_key_b64(key.public_key())]},
            "log": {"path": str(tmp_path / f"log{i}.db")},
        })  # fmt: skip
        backend = AdaptingBackend(model)
        client = Client(backend, settings=settings)
        assert client.generate("hi", max_tokens=3).text == "one two three"
        assert client._runner is not None
        loop = client._runner.loop
        client.close()
        assert pending(loop) == []
    assert destroyed(caplog) == []
    assert BASE_SHA  # the model file above is the base the fake adapter was made for
