"""Builds the hybrid engine and its background upkeep from settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgecloud.backends import TextBackend
from edgecloud.backends._base import AdapterCapable
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import HybridEngine
from edgecloud.device._settings import DeviceSettings

if TYPE_CHECKING:
    from edgecloud.device._adapters import AdapterManager
    from edgecloud.device._discovered import DiscoveredEndpoints
    from edgecloud.transport import CloudClient

__all__ = ["adapter_manager", "build_engine", "discover", "maintain"]

log = logging.getLogger("edgecloud.device")


def build_engine(backend: TextBackend, settings: DeviceSettings) -> HybridEngine:
    """Call inside the event loop that will run the engine (gRPC channels bind to it)."""
    from edgecloud.transport import CloudClient

    dev = settings.device
    pool = None
    if dev.cloud.endpoints or dev.discovery.enabled:
        endpoints = []
        for ep in dev.cloud.endpoints:
            client = CloudClient(
                ep.target, token=ep.bearer(), tls=ep.tls, root_certificates=ep.root_certificates,
                client_cert=ep.client_cert, client_key=ep.client_key, timeout_s=dev.cloud.timeout_s,
            )  # fmt: skip
            breaker = CircuitBreaker(dev.cloud.breaker_failures, dev.cloud.breaker_cooldown_s)
            endpoints.append(Endpoint(client, breaker))
        pool = EndpointPool(endpoints)
    escalation_log = None
    if dev.log.enabled:
        path = dev.log.path or settings.cache_dir / "escalations.db"
        escalation_log = EscalationLog(path, max_records=dev.log.max_records)
    learned = None
    if dev.router.learned_path is not None:
        from edgecloud.common.encoder import SentenceEncoder
        from edgecloud.router import LearnedRouter

        learned = (LearnedRouter.load(dev.router.learned_path), SentenceEncoder())
    return HybridEngine(
        backend, pool=pool, router=dev.router, cloud=dev.cloud, log=escalation_log,
        learned=learned, replay_rate=dev.log.replay_rate, shadow=dev.shadow,
    )  # fmt: skip


async def adapter_manager(engine: HybridEngine, settings: DeviceSettings) -> AdapterManager | None:
    """The adapter manager ``device.adapters`` asks for, restored to its last good version.

    None when adapters are off or the backend cannot take them. It follows the
    first cloud endpoint (sharing its channel, TLS and token); an offline device
    still restores the version it ran before the restart.

    Raises:
        ConfigError: a public key or the canary file cannot be read.
    """
    cfg = settings.device.adapters
    if not cfg.enabled:
        return None
    backend = engine.backend
    if not isinstance(backend, AdapterCapable):
        log.warning("device.adapters is enabled but %s cannot take adapters", backend.info.kind)
        return None
    from edgecloud.common.files import sha256_file
    from edgecloud.device._adapters import AdapterManager
    from edgecloud.transport import AdapterSyncClient

    model = Path(backend.info.path)
    sha = await asyncio.to_thread(sha256_file, model)
    arch = backend.metadata("general.architecture") if hasattr(backend, "metadata") else None
    cloud = _adapter_cloud(engine)
    client = AdapterSyncClient(cloud) if cloud is not None else None
    if client is None and engine.pool is not None and engine.pool.endpoints:
        first = engine.pool.endpoints[0].target
        log.warning("device.adapters: the first cloud endpoint %s is no edgecloud service; "
                    "adapter versions are not followed", first)  # fmt: skip
    manager = AdapterManager(
        backend,
        cfg,
        base_sha256=sha,
        base_architecture=arch or "",
        root=cfg.directory or settings.cache_dir / "adapters",
        client=client,
        on_swap=engine.set_adapter_routing,
    )
    await asyncio.to_thread(manager.start)
    return manager


def _adapter_cloud(engine: HybridEngine) -> CloudClient | None:
    """The endpoint adapter versions come from: the first one, when it is an edgecloud
    gRPC service (adapter sync shares its channel, TLS and token)."""
    from edgecloud.transport import CloudClient

    if engine.pool is None or not engine.pool.endpoints:
        return None
    first = engine.pool.endpoints[0].client
    return first if isinstance(first, CloudClient) else None


async def discover(engine: HybridEngine, settings: DeviceSettings) -> DiscoveredEndpoints | None:
    """Start browsing the LAN for cloud services (``device.discovery``); None when off.

    A failure to open mDNS is logged, not raised: the device runs on its configured
    endpoints (or offline) without discovery.
    """
    cfg = settings.device.discovery
    if not cfg.enabled or engine.pool is None:
        return None
    from edgecloud.device._discovered import DiscoveredEndpoints
    from edgecloud.errors import DiscoveryError

    found = DiscoveredEndpoints(engine.pool, cfg, settings.device.cloud)
    try:
        await found.start()
    except DiscoveryError as exc:
        log.warning("device.discovery: not browsing: %s", exc)
        await found.stop()
        return None
    return found


async def maintain(engine: HybridEngine, settings: DeviceSettings) -> None:
    """Browse the LAN for cloud services (when enabled), probe endpoint health, upload
    the escalation log and follow adapter versions, forever (cancel to stop; browsing
    stops with it)."""
    found = await discover(engine, settings)
    try:
        manager = await adapter_manager(engine, settings)
        if manager is not None and _adapter_cloud(engine) is not None:
            manager.start_watching()
        try:
            await _upkeep(engine, settings, manager)
        finally:
            if manager is not None:
                await manager.stop()
    finally:
        if found is not None:
            await found.stop()


async def _follow_first(engine: HybridEngine, manager: AdapterManager) -> None:
    """Point the adapter manager at the pool's first edgecloud endpoint when that changed:
    discovery adds and removes endpoints at run time."""
    from edgecloud.transport import AdapterSyncClient

    cloud = _adapter_cloud(engine)
    following = manager.following
    current = following.cloud if isinstance(following, AdapterSyncClient) else None
    if cloud is not current:
        log.info("device.adapters: following %s", cloud.target if cloud else "no cloud")
        await manager.follow(AdapterSyncClient(cloud) if cloud is not None else None)


async def _upkeep(
    engine: HybridEngine, settings: DeviceSettings, manager: AdapterManager | None = None
) -> None:
    cfg = settings.device
    next_upload = time.monotonic()
    while True:
        if engine.pool is not None:
            with contextlib.suppress(Exception):
                await engine.pool.probe()
            if manager is not None:
                await _follow_first(engine, manager)
            if time.monotonic() >= next_upload:
                try:
                    sent = await engine.upload_pending(cfg.log.upload_batch)
                    if sent:
                        log.info("uploaded %d escalation records", sent)
                        continue  # more may be waiting
                except Exception as exc:  # noqa: BLE001 - upkeep must not die
                    log.warning("escalation upload failed: %s", exc)
                next_upload = time.monotonic() + cfg.log.upload_interval_s
        await asyncio.sleep(cfg.cloud.health_interval_s)
