"""Builds the hybrid engine and its background upkeep from settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from edgecloud.config import Settings
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import HybridEngine
from edgecloud.device.backends import TextBackend

__all__ = ["build_engine", "maintain"]

log = logging.getLogger("edgecloud.device")


def build_engine(backend: TextBackend, settings: Settings) -> HybridEngine:
    """Call inside the event loop that will run the engine (gRPC channels bind to it)."""
    from edgecloud.transport import CloudClient

    dev = settings.device
    pool = None
    if dev.cloud.endpoints:
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
        from edgecloud.device._encoder import SentenceEncoder
        from edgecloud.router import LearnedRouter

        learned = (LearnedRouter.load(dev.router.learned_path), SentenceEncoder())
    return HybridEngine(
        backend, pool=pool, router=dev.router, cloud=dev.cloud, log=escalation_log, learned=learned
    )


async def maintain(engine: HybridEngine, settings: Settings) -> None:
    """Probe endpoint health and upload the escalation log, forever (cancel to stop)."""
    cfg = settings.device
    next_upload = time.monotonic()
    while True:
        if engine.pool is not None:
            with contextlib.suppress(Exception):
                await engine.pool.probe()
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
