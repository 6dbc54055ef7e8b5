"""The devices announced on the LAN (``_edgecloud-dev._tcp``, docs/discovery.md) as a
list the window can show, and the address typed by hand when multicast cannot pass.

An announcement is a claim, not a proof: the list shows what devices say about
themselves. The app only sends them the questions typed into it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

BROWSE_S = 3.0
"""How long one look at the LAN listens: devices answer a query within about a second."""
REFRESH_S = 30.0
"""How often the list is refreshed while the LAN connection is chosen."""


@dataclass(frozen=True)
class DeviceEntry:
    """One device's OpenAI-compatible endpoint.

    Attributes:
        name: the announced instance name (``edgecloud-robot-8080``).
        url: the API root, ``http://10.0.0.7:8080/v1``.
        model: the model it serves (``""`` when it did not say).
        typed: typed in by hand rather than announced (it stays across refreshes).
    """

    name: str
    url: str
    model: str = ""
    typed: bool = False

    @property
    def label(self) -> str:
        """The line shown in the device list."""
        if self.typed:
            return f"{self.url} (typed in)"
        host = urlsplit(self.url).netloc
        return f"{self.name} — {self.model or 'model?'} @ {host}"


def base_url(address: str, port: int, path: str = "/v1", *, tls: bool = False) -> str:
    """The URL of an endpoint at an IP address (IPv6 in brackets)."""
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{'https' if tls else 'http'}://{host}:{port}{path}"


def entries(found: Iterable[Any]) -> list[DeviceEntry]:
    """:class:`edgecloud.discovery.Discovered` devices as list entries, one per device
    (its first IPv4 address when it has one), sorted by name."""
    out = []
    for service in found:
        advert = service.advert
        if not service.addresses or not hasattr(advert, "path"):
            continue  # a cloud service, or a device that announced no address
        v4 = [a for a in service.addresses if ipaddress.ip_address(a).version == 4]
        address = (v4 or list(service.addresses))[0]
        url = base_url(address, service.port, advert.path, tls=advert.tls)
        out.append(DeviceEntry(service.instance, url, advert.model))
    return sorted(out, key=lambda e: (e.name, e.url))


def manual_entry(text: str) -> DeviceEntry:
    """A device typed by hand: ``10.0.0.7``, ``10.0.0.7:9000`` or a full URL.

    Raises:
        ValueError: not an address.
    """
    text = text.strip()
    if not text:
        raise ValueError("type the device's address, e.g. 192.168.1.20:8080")
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http address: {text!r}")
    try:
        port = parts.port or 8080
    except ValueError as exc:
        raise ValueError(f"bad port in {text!r}") from exc
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    path = parts.path.rstrip("/") or "/v1"
    url = f"{parts.scheme}://{host}:{port}{path}"
    return DeviceEntry(f"{parts.hostname}:{port}", url, typed=True)


async def discover(
    interfaces: Sequence[str] | Literal["all"] = "all", timeout_s: float = BROWSE_S
) -> list[DeviceEntry]:
    """The devices announced now (edgecloud's discovery, imported here so that the rest
    of the app starts without zeroconf)."""
    from edgecloud.discovery import DEVICE_SERVICE_TYPE, browse

    found = await browse(
        DEVICE_SERVICE_TYPE,
        interfaces="all" if interfaces == "all" else list(interfaces),
        timeout_s=timeout_s,
    )
    return entries(found)


def merge(found: Sequence[DeviceEntry], listed: Sequence[DeviceEntry]) -> list[DeviceEntry]:
    """The list after a look at the LAN: what was found, then the addresses typed in
    earlier that were not found announced."""
    urls = {d.url for d in found}
    return [*found, *(d for d in listed if d.typed and d.url not in urls)]


def keep_selection(old: DeviceEntry | None, new: Sequence[DeviceEntry]) -> DeviceEntry | None:
    """After a refresh: the same device if it is still there (by URL), else the first."""
    if old is not None:
        for entry in new:
            if entry.url == old.url:
                return entry
    return new[0] if new else None
