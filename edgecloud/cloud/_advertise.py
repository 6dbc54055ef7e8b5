"""The cloud service's announcement on the LAN (``[cloud.discovery]``).

What it says: protocol version, the services on its port (inference, adapters), its
model, the stable version of each adapter line, TLS and the SHA-256 fingerprint of its
certificate, and its load, refreshed every ``cloud.discovery.refresh_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from edgecloud.cloud._backend import CloudBackend
from edgecloud.cloud._settings import CloudConfig
from edgecloud.discovery import (
    Advertiser,
    CloudAdvert,
    certificate_fingerprint,
    default_name,
    plan,
)
from edgecloud.errors import DiscoveryError

if TYPE_CHECKING:
    from edgecloud.adapters._registry import AdapterRegistry

__all__ = ["CloudAnnouncement", "should_advertise"]

log = logging.getLogger("edgecloud.cloud")

KINDS = ("inference", "adapters")


def should_advertise(config: CloudConfig) -> bool:
    """``cloud.discovery.advertise``, or by default: whether ``cloud.host`` is off loopback."""
    if config.discovery.advertise is not None:
        return config.discovery.advertise
    from edgecloud.transport import is_loopback

    return not is_loopback(config.host)


def load_figure(backend: CloudBackend) -> float:
    """Sequences running and queued per running slot (0 idle, 1 full, above: a queue)."""
    snap = backend.load_snapshot()
    return round((snap.running + snap.queued) / max(1, snap.max_running), 2)


def adapter_lines(registry: AdapterRegistry | None) -> tuple[tuple[str, int | None], ...]:
    """Each adapter line of the registry with its stable version (unreadable: none)."""
    if registry is None:
        return ()
    try:
        return tuple(
            (a, registry.rollout_state(a).stable) for a in sorted(registry.adapters())[:16]
        )
    except Exception as exc:  # noqa: BLE001 - an announcement never stops the service
        log.info("discovery: adapter lines not announced: %s", exc)
        return ()


class CloudAnnouncement:
    """A running announcement and its refresh task; :meth:`stop` withdraws both."""

    def __init__(
        self,
        advertiser: Advertiser,
        backend: CloudBackend,
        registry: AdapterRegistry | None,
        base: CloudAdvert,
        refresh_s: float,
    ) -> None:
        self.advertiser = advertiser
        self._backend = backend
        self._registry = registry
        self._base = base
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        config: CloudConfig,
        backend: CloudBackend,
        registry: AdapterRegistry | None,
        port: int,
    ) -> CloudAnnouncement:
        """Announce the service bound to ``config.host:port``.

        Raises:
            DiscoveryError: mDNS cannot be opened, the name is taken (renaming off), or
                the certificate cannot be read.
        """
        cfg = config.discovery
        tls = config.tls.cert is not None
        fp = certificate_fingerprint(config.tls.cert) if config.tls.cert is not None else None
        adapters = await asyncio.to_thread(adapter_lines, registry)
        base = CloudAdvert(KINDS, (backend.info.model,), adapters, tls, fp, load_figure(backend))
        where, addresses = plan(config.host, cfg.interfaces)
        if not addresses:
            raise DiscoveryError(f"no address to announce for {config.host} on {where}")
        advertiser = Advertiser(
            cfg.service_type,
            cfg.name or default_name("edgecloud", port),
            port,
            txt=base.to_txt(),
            addresses=addresses,
            interfaces=where,
            rename=cfg.rename_on_conflict,
        )
        await advertiser.start()
        log.warning("announcing %r on the LAN (%s, port %d)", advertiser.name, where, port)
        self = cls(advertiser, backend, registry, base, cfg.refresh_s)
        self._task = asyncio.get_running_loop().create_task(self._refresh())
        return self

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                adapters = await asyncio.to_thread(adapter_lines, self._registry)
                advert = CloudAdvert(
                    self._base.kinds, self._base.models, adapters, self._base.tls,
                    self._base.fingerprint, load_figure(self._backend),
                )  # fmt: skip
                await self.advertiser.update(advert.to_txt())
            except Exception as exc:  # noqa: BLE001 - the service outlives its announcement
                log.warning("discovery: refreshing the announcement failed: %s", exc)

    async def stop(self) -> None:
        """Stop refreshing and withdraw the announcement."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.advertiser.stop()
