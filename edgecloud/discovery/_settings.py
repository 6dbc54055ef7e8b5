"""Settings of LAN discovery: ``[cloud.discovery]`` (advertise) and ``[device.discovery]``
(browse). They live here, beside the code, and the cloud and device sections embed them."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from edgecloud.common.settings import Section

__all__ = [
    "CLOUD_SERVICE_TYPE",
    "DEVICE_SERVICE_TYPE",
    "CloudDiscoveryConfig",
    "DeviceDiscoveryConfig",
    "Interfaces",
    "check_interfaces",
]

CLOUD_SERVICE_TYPE = "_edgecloud._tcp.local."
"""What a cloud service advertises (gRPC: inference, adapter sync)."""
DEVICE_SERVICE_TYPE = "_edgecloud-dev._tcp.local."
"""What a device advertises (its OpenAI-compatible HTTP endpoint). Not
``_edgecloud-device``: DNS-SD service names are 15 characters at most (RFC 6335)."""

Interfaces = list[str] | Literal["all"]
"""IP addresses of the interfaces to use, or ``"all"``."""

_SERVICE_TYPE = r"^_[a-z0-9][a-z0-9-]{0,14}\._(tcp|udp)\.local\.$"
_INSTANCE = r"^[^.\x00-\x1f]{1,63}$"


def check_interfaces(value: Interfaces | None) -> Interfaces | None:
    if value is None or value == "all":
        return value
    if not value:
        raise ValueError("name at least one interface address, or 'all'")
    for address in value:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address") from None
    return value


class CloudDiscoveryConfig(Section):
    """How a cloud service advertises itself on the LAN (mDNS/DNS-SD, ``_edgecloud._tcp``).

    By default a service advertises where it listens: bound to a LAN address it is
    announced on that interface, bound to the wildcard on every interface, bound to
    loopback it stays quiet (``advertise = true`` announces it on loopback, for tests
    and for devices on the same host).
    """

    advertise: bool | None = Field(
        None,
        description=(
            "Announce the service on the LAN. None: on when cloud.host is not a loopback "
            "address (a service only this host can reach has nobody to tell)."
        ),
    )
    name: str | None = Field(
        None,
        pattern=_INSTANCE,
        description=(
            "Instance name; None: 'edgecloud-<hostname>-<port>'. Taken names get '-2', "
            "'-3', ... (see rename_on_conflict)."
        ),
    )
    interfaces: Interfaces | None = Field(
        None,
        description=(
            "IP addresses of the interfaces to announce on, or 'all'. None: the address "
            "cloud.host binds ('all' for 0.0.0.0 or ::)."
        ),
    )
    service_type: str = Field(
        CLOUD_SERVICE_TYPE, pattern=_SERVICE_TYPE, description="DNS-SD service type announced."
    )
    refresh_s: float = Field(
        10.0,
        ge=0.1,
        le=3600,
        description="Seconds between refreshes of the advertised load (TXT record).",
    )
    rename_on_conflict: bool = Field(
        True,
        description=(
            "When another service holds the name, take the next free one ('-2', ...); "
            "False: fail to start with a DiscoveryError."
        ),
    )

    @field_validator("interfaces")
    @classmethod
    def _interfaces(cls, value: Interfaces | None) -> Interfaces | None:
        return check_interfaces(value)


class DeviceDiscoveryConfig(Section):
    """Cloud services the device finds on the LAN, beside ``device.cloud.endpoints``.

    A discovered service is used only when it proves who it is: TLS whose certificate has
    the advertised SHA-256 fingerprint and is signed by `root_certificates` or pinned in
    `pinned_fingerprints` (plain text: a loopback address only). Configured endpoints
    always come first. See docs/discovery.md for the threat model.
    """

    enabled: bool = Field(False, description="Browse the LAN for cloud services.")
    service_type: str = Field(
        CLOUD_SERVICE_TYPE,
        pattern=_SERVICE_TYPE,
        description="DNS-SD service type to browse.",
    )
    interfaces: Interfaces = Field(
        "all", description="IP addresses of the interfaces to browse on, or 'all'."
    )
    resolve_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Seconds to resolve one service (address, port, TXT)."
    )
    browse_timeout_s: float = Field(
        3.0, gt=0, le=600, description="Seconds `edgecloud discover` listens by default."
    )
    health_timeout_s: float = Field(
        2.0, gt=0, le=60, description="Deadline of the TLS check and the health check."
    )
    refresh_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description=(
            "Seconds between round-trip measurements of the discovered services, and "
            "between retries of one that could not be reached."
        ),
    )
    max_endpoints: int = Field(
        8, ge=1, le=64, description="Discovered services kept at once (the best ranked)."
    )
    load_weight_ms: float = Field(
        100.0,
        ge=0,
        le=60_000,
        description=(
            "Ranking: a fully loaded service (advertised load 1.0) counts as this many "
            "milliseconds of extra round trip."
        ),
    )
    token: str | None = Field(
        None,
        min_length=8,
        description="Bearer token sent to discovered services that proved their identity.",
    )
    token_file: Path | None = Field(None, description="File holding that bearer token.")
    root_certificates: Path | None = Field(
        None,
        description=(
            "PEM CA bundle a discovered service's certificate must chain to (as in "
            "device.cloud.endpoints); unset: only pinned_fingerprints are trusted."
        ),
    )
    client_cert: Path | None = Field(None, description="PEM certificate for mTLS.")
    client_key: Path | None = Field(None, description="PEM private key for mTLS.")
    pinned_fingerprints: list[str] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "SHA-256 fingerprints (hex) of service certificates trusted without the CA "
            "(self-signed certificates)."
        ),
    )
    plaintext_loopback: bool = Field(
        True,
        description=(
            "Accept a service advertising plain text when its address is loopback (the "
            "rule device.cloud.endpoints follow); never off loopback."
        ),
    )

    @field_validator("interfaces")
    @classmethod
    def _interfaces(cls, value: Interfaces) -> Interfaces:
        return check_interfaces(value) or "all"

    @field_validator("pinned_fingerprints")
    @classmethod
    def _fingerprints(cls, value: list[str]) -> list[str]:
        out = []
        for fp in value:
            norm = fp.replace(":", "").strip().lower()
            if len(norm) != 64 or any(c not in "0123456789abcdef" for c in norm):
                raise ValueError(f"{fp!r} is not a SHA-256 fingerprint (64 hex digits)")
            out.append(norm)
        return out

    def bearer(self) -> str | None:
        """The token, read from `token_file` when set."""
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token
