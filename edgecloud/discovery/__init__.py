"""Zero-configuration discovery on the LAN: mDNS/DNS-SD with python-zeroconf.

A cloud service announces ``_edgecloud._tcp.local.`` with a TXT record
(:class:`CloudAdvert`: protocol version, service kinds, models, adapter lines, TLS and
the certificate's SHA-256 fingerprint, load); a device browses for it
(:class:`Browser`), checks who answers (:func:`verify_peer`) and ranks what it found
(:func:`rank`). Devices can announce their HTTP endpoint too
(:func:`advertise_device`, ``_edgecloud-dev._tcp.local.``).

Discovery is not trust: an announcement is a claim anybody on the LAN can make. A
device gives its token only to a service that proves the advertised certificate and
that the device trusts by CA or pin; see docs/discovery.md.

zeroconf itself is imported only when an advertiser or a browser starts (the
``discovery`` extra).

Examples:
    >>> import asyncio
    >>> from edgecloud.discovery import browse
    >>> for s in asyncio.run(browse(interfaces=["127.0.0.1"], timeout_s=2)):  # doctest: +SKIP
    ...     print(s.instance, s.addresses, s.port, s.advert.load)
"""

from __future__ import annotations

from edgecloud.discovery._device import advertise_device
from edgecloud.discovery._rank import Rankable, rank, score
from edgecloud.discovery._settings import (
    CLOUD_SERVICE_TYPE,
    DEVICE_SERVICE_TYPE,
    CloudDiscoveryConfig,
    DeviceDiscoveryConfig,
)
from edgecloud.discovery._tls import (
    TrustedPeer,
    certificate_fingerprint,
    fingerprint,
    peer_certificate,
    verify_peer,
)
from edgecloud.discovery._txt import PROTOCOL_VERSION, CloudAdvert, DeviceAdvert
from edgecloud.discovery._zc import (
    Advertiser,
    Browser,
    Discovered,
    Found,
    Lost,
    browse,
    default_name,
    plan,
)

__all__ = [
    "CLOUD_SERVICE_TYPE",
    "DEVICE_SERVICE_TYPE",
    "PROTOCOL_VERSION",
    "Advertiser",
    "Browser",
    "CloudAdvert",
    "CloudDiscoveryConfig",
    "DeviceAdvert",
    "DeviceDiscoveryConfig",
    "Discovered",
    "Found",
    "Lost",
    "Rankable",
    "TrustedPeer",
    "advertise_device",
    "browse",
    "certificate_fingerprint",
    "default_name",
    "fingerprint",
    "peer_certificate",
    "plan",
    "rank",
    "score",
    "verify_peer",
]
