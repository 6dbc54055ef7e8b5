"""Cloud endpoints found on the LAN (``[device.discovery]``), kept in the endpoint pool.

:class:`DiscoveredEndpoints` owns a zeroconf browser. For each cloud service announced
it checks identity first (TLS with the advertised certificate, trusted by CA or pin;
plain text only on loopback), then health, and only then hands it to the pool, with
the device's token. Services are ranked by measured health round trip and advertised
load; configured endpoints stay first. A service that withdraws leaves the pool; one
that fails is re-measured every ``refresh_s`` and ranked last until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._settings import DeviceCloudConfig
from edgecloud.discovery import Browser, CloudAdvert, Discovered, Found, rank, verify_peer
from edgecloud.discovery._settings import DeviceDiscoveryConfig
from edgecloud.errors import EdgeCloudError, TransportError, UntrustedServiceError
from edgecloud.transport import CloudClient, is_loopback

__all__ = ["DiscoveredEndpoints"]

log = logging.getLogger("edgecloud.device.discovery")

_ADDRESSES_TRIED = 4
_ADMITTING_AT_ONCE = 4


@dataclass
class _Entry:
    """A discovered service in the pool."""

    service: Discovered
    endpoint: Endpoint
    rtt_s: float | None

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def load(self) -> float | None:
        advert = self.service.advert
        return advert.load if isinstance(advert, CloudAdvert) else None

    @property
    def healthy(self) -> bool | None:
        if self.endpoint.breaker.state(time.monotonic()) == "open":
            return False
        return self.endpoint.healthy


def _key(service: Discovered) -> tuple[object, ...]:
    """What identifies the endpoint a service announces (a load change is not a new one)."""
    advert = service.advert
    return service.addresses, service.port, advert.tls, advert.fingerprint


def _target(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class DiscoveredEndpoints:
    """Keeps ``pool``'s discovered endpoints in step with the LAN.

    Args:
        pool: the device's endpoint pool.
        config: ``device.discovery``.
        cloud: ``device.cloud`` (timeouts and breaker settings of each endpoint).

    Examples:
        >>> async with DiscoveredEndpoints(pool, dev.discovery, dev.cloud) as d:  # doctest: +SKIP
        ...     await d.wait_for(1, timeout_s=10)
    """

    def __init__(
        self, pool: EndpointPool, config: DeviceDiscoveryConfig, cloud: DeviceCloudConfig
    ) -> None:
        self.pool = pool
        self.config = config
        self.cloud = cloud
        self._browser = Browser(
            config.service_type,
            interfaces=config.interfaces,
            resolve_timeout_s=config.resolve_timeout_s,
            max_services=config.max_endpoints * 4,
        )
        self._entries: dict[str, _Entry] = {}
        self._rejected: dict[str, tuple[object, ...]] = {}
        """Services that failed the identity check, with what they announced then: tried
        again only when the announcement changes."""
        self._retry_at: dict[str, float] = {}
        """Services that could not be reached, and when to try again."""
        self._admitting: dict[str, asyncio.Task[None]] = {}
        self._gate = asyncio.Semaphore(_ADMITTING_AT_ONCE)
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def entries(self) -> list[_Entry]:
        """The services in the pool, best first."""
        return rank(list(self._entries.values()), load_weight_ms=self.config.load_weight_ms)

    async def start(self) -> None:
        """Start browsing (and measuring).

        Raises:
            DiscoveryError: mDNS cannot be opened on the interfaces.
        """
        await self._browser.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow()), loop.create_task(self._refresh())]

    async def stop(self) -> None:
        """Stop browsing, take the discovered endpoints out of the pool and close them."""
        for task in [*self._tasks, *self._admitting.values()]:
            task.cancel()
        for task in [*self._tasks, *self._admitting.values()]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._browser.stop()
        entries, self._entries = list(self._entries.values()), {}
        self.pool.set_discovered([])
        await asyncio.gather(*(e.endpoint.client.close() for e in entries))

    async def __aenter__(self) -> DiscoveredEndpoints:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int = 1, *, timeout_s: float) -> list[str]:
        """Wait until ``count`` services are in the pool; their targets, best first.

        Raises:
            TimeoutError: fewer within ``timeout_s``.
        """
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self._entries) >= count), timeout_s
            )
        return [e.endpoint.target for e in self.entries]

    async def _follow(self) -> None:
        async for event in self._browser.events():
            if isinstance(event, Found):
                self._found(event.service)
            else:
                await self._drop(event.name, "withdrew from the LAN")

    def _found(self, service: Discovered) -> None:
        name = service.name
        advert = service.advert
        if not isinstance(advert, CloudAdvert) or "inference" not in advert.kinds:
            log.debug("%s serves no inference; ignored", name)
            return
        entry = self._entries.get(name)
        if entry is not None and _key(entry.service) == _key(service):
            entry.service = service  # a new load figure
            self._publish()
            return
        if self._rejected.get(name) == _key(service):
            return
        self._rejected.pop(name, None)
        self._retry_at.pop(name, None)
        self._admit_soon(service)

    def _admit_soon(self, service: Discovered) -> None:
        running = self._admitting.pop(service.name, None)
        if running is not None:
            running.cancel()
        task = asyncio.get_running_loop().create_task(self._admit(service))
        self._admitting[service.name] = task

        def done(t: asyncio.Task[None], name: str = service.name) -> None:
            if self._admitting.get(name) is t:
                del self._admitting[name]

        task.add_done_callback(done)

    async def _admit(self, service: Discovered) -> None:
        async with self._gate:
            old = self._entries.pop(service.name, None)
            if old is not None:  # it moved or changed its certificate: check it again
                self._publish()
                await old.endpoint.client.close()
            failure = "no address"
            for address in service.addresses[:_ADDRESSES_TRIED]:
                try:
                    endpoint, rtt = await self._connect(service, address)
                except UntrustedServiceError as exc:
                    failure = str(exc)
                    log.warning("discovered %s rejected: %s", service.name, exc)
                    self._rejected[service.name] = _key(service)
                    continue
                except (EdgeCloudError, OSError) as exc:
                    failure = str(exc)
                    log.info("discovered %s at %s unreachable: %s", service.name, address, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - one odd service must not stop the rest
                    failure = repr(exc)
                    log.warning("discovered %s at %s failed: %r", service.name, address, exc)
                    continue
                self._entries[service.name] = _Entry(service, endpoint, rtt)
                log.warning("discovered cloud %s at %s (%.1f ms)", service.instance,
                            endpoint.target, rtt * 1000)  # fmt: skip
                await self._publish_and_notify()
                return
            if service.name not in self._rejected:
                self._retry_at[service.name] = time.monotonic() + self.config.refresh_s
            log.info("discovered %s not used: %s", service.name, failure)

    async def _connect(self, service: Discovered, address: str) -> tuple[Endpoint, float]:
        """An endpoint for ``service`` at ``address`` that proved its identity and answers
        its health check, and that check's round trip.

        Raises:
            UntrustedServiceError: it failed the identity check (never given the token).
            EdgeCloudError: it cannot be reached or does not serve.
        """
        cfg = self.config
        target = _target(address, service.port)
        advert = service.advert
        if not advert.tls:
            if not (cfg.plaintext_loopback and is_loopback(address)):
                raise UntrustedServiceError(
                    f"{target} announces plain text off loopback; a token never goes there"
                )
            client = CloudClient(target, token=cfg.bearer(), tls=False,
                                 timeout_s=self.cloud.timeout_s)  # fmt: skip
        else:
            peer = await verify_peer(
                address, service.port, advertised=advert.fingerprint,
                cafile=cfg.root_certificates, pinned=set(cfg.pinned_fingerprints),
                timeout_s=cfg.health_timeout_s,
            )  # fmt: skip
            log.info("%s proved certificate sha256:%s (%s)", target, peer.fingerprint, peer.how)
            client = CloudClient(
                target, token=cfg.bearer(), root_certificates=peer.root_certificates,
                client_cert=cfg.client_cert, client_key=cfg.client_key,
                server_name=peer.server_name, timeout_s=self.cloud.timeout_s,
            )  # fmt: skip
        endpoint = Endpoint(
            client, CircuitBreaker(self.cloud.breaker_failures, self.cloud.breaker_cooldown_s)
        )
        try:
            await self._measure_connect(endpoint)
            rtt = await self._measure(endpoint)
        except BaseException:
            await client.close()
            raise
        if rtt is None:
            await client.close()
            raise TransportError(f"{target} does not report SERVING")
        return endpoint, rtt

    async def _measure_connect(self, endpoint: Endpoint) -> None:
        """The first health check (it pays for the connection and the handshake)."""
        if not await endpoint.client.health(timeout_s=self.config.health_timeout_s):
            raise TransportError(f"{endpoint.target} does not report SERVING")

    async def _measure(self, endpoint: Endpoint) -> float | None:
        """One health check's round trip; None when it fails (counted on the breaker)."""
        start = time.monotonic()
        try:
            ok = await endpoint.client.health(timeout_s=self.config.health_timeout_s)
        except EdgeCloudError as exc:
            log.info("discovered cloud %s unhealthy: %s", endpoint.target, exc)
            ok = False
        rtt = time.monotonic() - start
        endpoint.healthy = ok
        if ok:
            endpoint.breaker.record_success()
            return rtt
        endpoint.breaker.record_failure(time.monotonic())
        return None

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            entries = list(self._entries.values())
            rtts = await asyncio.gather(*(self._measure(e.endpoint) for e in entries))
            for entry, rtt in zip(entries, rtts, strict=True):
                entry.rtt_s = rtt
            self._publish()
            now = time.monotonic()
            for name, when in list(self._retry_at.items()):
                service = self._browser.services.get(name)
                if service is None:
                    del self._retry_at[name]
                elif when <= now and name not in self._admitting:
                    del self._retry_at[name]
                    self._admit_soon(service)

    async def _drop(self, name: str, why: str) -> None:
        task = self._admitting.pop(name, None)
        if task is not None:
            task.cancel()
        self._rejected.pop(name, None)
        self._retry_at.pop(name, None)
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        log.warning("discovered cloud %s %s; moving on", entry.service.instance, why)
        await self._publish_and_notify()
        await entry.endpoint.client.close()

    def _publish(self) -> None:
        """Hand the pool the best ``max_endpoints`` services, best first."""
        ranked = self.entries
        self.pool.set_discovered([e.endpoint for e in ranked[: self.config.max_endpoints]])

    async def _publish_and_notify(self) -> None:
        self._publish()
        async with self._changed:
            self._changed.notify_all()
