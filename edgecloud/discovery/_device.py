"""A device's own announcement: its OpenAI-compatible HTTP endpoint (``_edgecloud-dev._tcp``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from edgecloud.discovery._settings import DEVICE_SERVICE_TYPE, Interfaces
from edgecloud.discovery._tls import certificate_fingerprint
from edgecloud.discovery._txt import DeviceAdvert
from edgecloud.discovery._zc import Advertiser, default_name, plan

__all__ = ["advertise_device"]


@asynccontextmanager
async def advertise_device(
    port: int,
    *,
    host: str = "0.0.0.0",
    model: str = "",
    path: str = "/v1",
    certificate: Path | None = None,
    name: str | None = None,
    interfaces: Interfaces | None = None,
    rename: bool = True,
) -> AsyncIterator[Advertiser]:
    """Announce a device's HTTP endpoint while the block runs, and withdraw it after.

    Args:
        port: where the HTTP server listens.
        host: the address it binds (announced on that interface; the wildcard: on
            ``interfaces``, default all).
        model: the model it answers with (TXT ``model``).
        path: the API root (TXT ``path``).
        certificate: its PEM server certificate when it serves https: TLS is announced
            with the certificate's SHA-256 fingerprint. None: plain http.
        name: instance name; None: ``edgecloud-device-<hostname>-<port>``.
        interfaces: where to announce (IP addresses or ``"all"``); None: see ``host``.
        rename: take ``name-2``, ... when the name is taken; False raises.

    Raises:
        DiscoveryError: mDNS cannot be opened, the name is taken (``rename`` off), or the
            certificate cannot be read.

    Examples:
        >>> async with advertise_device(8080, host="127.0.0.1", model="gemma3"):  # doctest: +SKIP
        ...     await server.serve()
    """
    fp = certificate_fingerprint(certificate) if certificate is not None else None
    advert = DeviceAdvert(path=path, model=model, tls=fp is not None, fingerprint=fp)
    where, addresses = plan(host, interfaces)
    advertiser = Advertiser(
        DEVICE_SERVICE_TYPE,
        name or default_name("edgecloud-device", port),
        port,
        txt=advert.to_txt(),
        addresses=addresses,
        interfaces=where,
        rename=rename,
    )
    async with advertiser:
        yield advertiser
