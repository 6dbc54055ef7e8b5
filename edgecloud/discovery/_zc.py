"""mDNS/DNS-SD with python-zeroconf (async API): advertise a service, browse for them.

zeroconf is imported when an :class:`Advertiser` or :class:`Browser` starts, never at
import. Both bind only the interfaces they are given (tests use ``["127.0.0.1"]``).

Name conflicts are checked here rather than left to zeroconf's probing alone: probes ask
for unicast answers, which on one host (several responders sharing port 5353) may reach
another responder's socket, so a second service could take a held name unnoticed. Before
registering, the advertiser asks for the name with a multicast query; a name someone
answers for is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgecloud.discovery._settings import CLOUD_SERVICE_TYPE, DEVICE_SERVICE_TYPE, Interfaces
from edgecloud.discovery._txt import CloudAdvert, DeviceAdvert
from edgecloud.errors import DiscoveryError

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

__all__ = ["Advertiser", "Browser", "Discovered", "Found", "Lost", "browse", "default_name", "plan"]

log = logging.getLogger("edgecloud.discovery")

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")
_NAME_CHECK_MS = 1500
"""How long a name is asked for before it counts as free: over a second, because a
responder multicasts a record at most once a second (RFC 6762, section 6) and may have
just answered someone else's question."""
_MAX_RENAMES = 9


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def plan(host: str, interfaces: Interfaces | None) -> tuple[Interfaces, list[str]]:
    """Where to announce a service bound to ``host``, and the addresses to announce.

    A service bound to one address is announced on that interface with that address; one
    bound to the wildcard on ``interfaces`` (default: all), with their addresses.

    Raises:
        DiscoveryError: ``host`` is a name that does not resolve.
    """
    if host not in _WILDCARDS:
        address = host if _is_ip(host) else _resolve(host)
        return (interfaces if interfaces is not None else [address]), [address]
    if interfaces is not None and interfaces != "all":
        return interfaces, list(interfaces)
    import ifaddr

    found = [
        str(ip.ip)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback
    ]
    return "all", found


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise DiscoveryError(f"cannot resolve {host!r} to announce it: {exc}") from exc


def default_name(prefix: str, port: int) -> str:
    """``<prefix>-<hostname>-<port>``, as a DNS label (at most 63 characters)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
    return f"{prefix}-{host}"[: 63 - len(str(port)) - 1] + f"-{port}"


def _zeroconf(interfaces: Interfaces) -> AsyncZeroconf:
    from zeroconf import InterfaceChoice, IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    try:
        if interfaces == "all":
            return AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
        v6 = sum(":" in ip for ip in interfaces)
        version = (
            IPVersion.V4Only
            if not v6
            else IPVersion.V6Only
            if v6 == len(interfaces)
            else IPVersion.All
        )
        return AsyncZeroconf(interfaces=list(interfaces), ip_version=version)
    except OSError as exc:
        raise DiscoveryError(f"cannot open mDNS on {interfaces}: {exc}") from exc


def _instance(name: str, service_type: str) -> str:
    return name[: -len(service_type) - 1] if name.endswith("." + service_type) else name


class Advertiser:
    """One service announced on the LAN until :meth:`stop`.

    Args:
        service_type: e.g. ``_edgecloud._tcp.local.``.
        name: instance name (a DNS label); taken names get ``-2``, ``-3``, ...
        port: where the service listens.
        txt: the TXT record (see :class:`CloudAdvert`, :class:`DeviceAdvert`).
        addresses: IP addresses the service is reached at.
        interfaces: IP addresses of the interfaces to announce on, or ``"all"``.
        rename: take the next free name on a conflict; False raises instead.

    Examples:
        >>> async with Advertiser(CLOUD_SERVICE_TYPE, "lab", 50051,  # doctest: +SKIP
        ...                       txt=CloudAdvert(tls=False).to_txt(),
        ...                       addresses=["127.0.0.1"], interfaces=["127.0.0.1"]) as ad:
        ...     await ad.update(CloudAdvert(tls=False, load=0.5).to_txt())
    """

    def __init__(
        self,
        service_type: str,
        name: str,
        port: int,
        *,
        txt: Mapping[str, str],
        addresses: Sequence[str],
        interfaces: Interfaces,
        rename: bool = True,
    ) -> None:
        self.service_type = service_type
        self.base_name = name
        self.name = name
        """The registered instance name (after :meth:`start`; may carry a suffix)."""
        self.port = port
        self._txt = dict(txt)
        self._addresses = list(addresses)
        self._interfaces = interfaces
        self._rename = rename
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    async def start(self) -> str:
        """Register under a free name; returns it.

        Raises:
            DiscoveryError: the name is taken and ``rename`` is off (or no free name
                within ten tries), or mDNS cannot be opened.
        """
        from zeroconf import NonUniqueNameException

        zc = self._zc = _zeroconf(self._interfaces)
        try:
            for attempt in range(_MAX_RENAMES + 1):
                candidate = self.base_name if attempt == 0 else f"{self.base_name}-{attempt + 1}"
                info = self._make_info(candidate)
                if await self._taken(info.name):
                    why = f"{candidate!r} is already announced on the LAN"
                else:
                    try:
                        await (await zc.async_register_service(info, allow_name_change=False))
                    except NonUniqueNameException:
                        why = f"{candidate!r} is already announced on the LAN"
                    else:
                        self._info, self.name = info, candidate
                        log.info("announcing %s on %s", info.name, self._interfaces)
                        return candidate
                if not self._rename:
                    raise DiscoveryError(f"{why} ({self.service_type}); choose another name")
                log.warning("%s; trying another name", why)
            raise DiscoveryError(f"no free name for {self.base_name!r} in {_MAX_RENAMES + 1} tries")
        except BaseException:
            await self._close()
            raise

    def _make_info(self, instance: str) -> AsyncServiceInfo:
        from zeroconf.asyncio import AsyncServiceInfo

        label = re.sub(r"[^A-Za-z0-9-]", "-", instance)[:63]
        return AsyncServiceInfo(
            self.service_type,
            f"{instance}.{self.service_type}",
            port=self.port,
            properties=self._txt,
            parsed_addresses=self._addresses,
            server=f"{label}.local.",
        )

    async def _taken(self, name: str) -> bool:
        from zeroconf import DNSQuestionType
        from zeroconf.asyncio import AsyncServiceInfo

        assert self._zc is not None
        probe = AsyncServiceInfo(self.service_type, name)
        return bool(
            await probe.async_request(self._zc.zeroconf, _NAME_CHECK_MS, DNSQuestionType.QM)
        )

    async def update(self, txt: Mapping[str, str]) -> None:
        """Announce a new TXT record (no-op when unchanged or not started)."""
        if self._zc is None or self._info is None or dict(txt) == self._txt:
            return
        self._txt = dict(txt)
        info = self._make_info(self.name)
        await (await self._zc.async_update_service(info))
        self._info = info

    async def stop(self) -> None:
        """Withdraw the announcement (a goodbye packet) and close mDNS."""
        if self._zc is not None and self._info is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    await self._zc.async_unregister_service(self._info), timeout=3.0
                )
            log.info("withdrew %s", self._info.name)
            self._info = None
        await self._close()

    async def _close(self) -> None:
        zc, self._zc = self._zc, None
        if zc is not None:
            await zc.async_close()

    async def __aenter__(self) -> Advertiser:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True)
class Discovered:
    """One resolved service: where it is and what it says (a claim, not a proof).

    Attributes:
        name: full DNS-SD name (``lab._edgecloud._tcp.local.``).
        addresses: its IP addresses, as announced.
        port: its port.
        server: its host name (``lab.local.``).
        advert: the parsed TXT record.
    """

    name: str
    service_type: str
    addresses: tuple[str, ...]
    port: int
    server: str | None
    advert: CloudAdvert | DeviceAdvert

    @property
    def instance(self) -> str:
        """The instance name alone (``lab``)."""
        return _instance(self.name, self.service_type)


@dataclass(frozen=True)
class Found:
    """A service appeared, or changed what it announces."""

    service: Discovered


@dataclass(frozen=True)
class Lost:
    """A service withdrew (or its records expired)."""

    name: str


class Browser:
    """Watches the LAN for one service type and reports :class:`Found` and :class:`Lost`.

    Services whose TXT record breaks the rules are skipped with a log line. At most
    ``max_services`` are followed at once (a flood of announcements cannot grow memory
    without bound); events wait in a bounded queue.

    Examples:
        >>> async with Browser(interfaces=["127.0.0.1"]) as browser:  # doctest: +SKIP
        ...     async for event in browser.events():
        ...         print(event)
    """

    def __init__(
        self,
        service_type: str = CLOUD_SERVICE_TYPE,
        *,
        interfaces: Interfaces = "all",
        resolve_timeout_s: float = 3.0,
        max_services: int = 64,
    ) -> None:
        self.service_type = service_type
        self._interfaces = interfaces
        self._timeout_ms = int(resolve_timeout_s * 1000)
        self._max = max_services
        self._advert: type[CloudAdvert] | type[DeviceAdvert] = (
            DeviceAdvert if service_type == DEVICE_SERVICE_TYPE else CloudAdvert
        )
        self.services: dict[str, Discovered] = {}
        """The services resolved and not withdrawn, by full name."""
        self._queue: asyncio.Queue[Found | Lost] = asyncio.Queue(maxsize=1024)
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._skipped: set[str] = set()

    async def start(self) -> None:
        """Open mDNS on the interfaces and start browsing.

        Raises:
            DiscoveryError: mDNS cannot be opened there.
        """
        from zeroconf import DNSQuestionType
        from zeroconf.asyncio import AsyncServiceBrowser

        self._zc = _zeroconf(self._interfaces)
        # Multicast questions only: a unicast answer to port 5353 reaches one of the
        # sockets sharing it on this host, maybe another responder's, not this browser.
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf,
            [self.service_type],
            handlers=[self._on_change],
            question_type=DNSQuestionType.QM,
        )

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        log.debug("%s: %s", name, state_change)
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            self._skipped.discard(name)
            if self.services.pop(name, None) is not None:
                self._put(Lost(name))
            return
        if name in self._resolving:
            self._again.add(name)  # resolve once more when the running one ends
            return
        if name not in self.services and len(self.services) + len(self._resolving) >= self._max:
            if name not in self._skipped:
                self._skipped.add(name)
                log.warning("ignoring %s: already following %d services", name, self._max)
            return
        self._resolving[name] = asyncio.get_running_loop().create_task(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        from zeroconf import DNSQuestionType
        from zeroconf.asyncio import AsyncServiceInfo

        assert self._zc is not None
        try:
            while True:
                self._again.discard(name)
                info = AsyncServiceInfo(self.service_type, name)
                ok = await info.async_request(
                    self._zc.zeroconf, self._timeout_ms, DNSQuestionType.QM
                )
                if ok:
                    self._resolved(name, info)
                else:
                    log.info("could not resolve %s within %d ms", name, self._timeout_ms)
                if name not in self._again:
                    break
        except Exception as exc:  # noqa: BLE001 - one bad answer must not stop browsing
            log.warning("skipping %s: %r", name, exc)
        finally:
            self._resolving.pop(name, None)

    def _resolved(self, name: str, info: AsyncServiceInfo) -> None:
        try:
            advert = self._advert.from_txt(info.properties)
        except DiscoveryError as exc:
            if name not in self._skipped:
                log.warning("skipping %s: %s", name, exc)
            self._skipped.add(name)
            if self.services.pop(name, None) is not None:
                self._put(Lost(name))
            return
        addresses = tuple(info.parsed_scoped_addresses())
        if not addresses or not info.port:
            log.info("skipping %s: no address or port announced", name)
            return
        self._skipped.discard(name)
        service = Discovered(name, self.service_type, addresses, info.port, info.server, advert)
        if self.services.get(name) == service:
            return
        self.services[name] = service
        self._put(Found(service))

    def _put(self, event: Found | Lost) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("discovery events are not being read; dropped %s", event)

    async def get(self) -> Found | Lost:
        """The next event (waits)."""
        return await self._queue.get()

    async def events(self) -> AsyncIterator[Found | Lost]:
        """Events as they come, until cancelled."""
        while True:
            yield await self._queue.get()

    async def stop(self) -> None:
        """Stop browsing, cancel resolutions, close mDNS."""
        for task in list(self._resolving.values()):
            task.cancel()
        for task in list(self._resolving.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            await self._zc.async_close()
            self._zc = None

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def browse(
    service_type: str = CLOUD_SERVICE_TYPE,
    *,
    interfaces: Interfaces = "all",
    timeout_s: float = 3.0,
    resolve_timeout_s: float = 3.0,
) -> list[Discovered]:
    """The services announced now: listens for ``timeout_s`` and returns what was there
    at the end (sorted by name)."""
    async with Browser(
        service_type, interfaces=interfaces, resolve_timeout_s=resolve_timeout_s
    ) as browser:
        await asyncio.sleep(timeout_s)
        return sorted(browser.services.values(), key=lambda s: s.name)
