"""Proof of identity for a discovered service: the certificate it presents, checked
against the fingerprint it advertised and against what the device trusts.

The check connects with :mod:`ssl` first (nothing is sent but a TLS handshake: no
token, no request), reads the peer certificate (DER) and hashes it. The service is
trusted only when the hash equals the advertised fingerprint *and* the certificate
either chains to the device's CA bundle or is pinned by fingerprint. The gRPC channel
built afterwards verifies the same trust anchors again on its own connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgecloud.errors import DiscoveryError, UntrustedServiceError

__all__ = ["TrustedPeer", "certificate_fingerprint", "fingerprint", "peer_certificate",
           "verify_peer"]  # fmt: skip

log = logging.getLogger("edgecloud.discovery")


def fingerprint(der: bytes) -> str:
    """SHA-256 (lower-case hex) of a DER certificate: what TXT ``fp`` carries."""
    return hashlib.sha256(der).hexdigest()


def certificate_fingerprint(pem_file: Path) -> str:
    """The fingerprint of the first certificate of a PEM file (a server's chain).

    Raises:
        DiscoveryError: the file cannot be read or holds no certificate.
    """
    try:
        text = pem_file.expanduser().read_text()
    except OSError as exc:
        raise DiscoveryError(f"cannot read {pem_file}: {exc.strerror}") from exc
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise DiscoveryError(f"{pem_file} holds no PEM certificate")
    try:
        return fingerprint(ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)]))
    except ValueError as exc:
        raise DiscoveryError(f"{pem_file}: {exc}") from exc


async def peer_certificate(
    host: str, port: int, *, timeout_s: float, cafile: Path | None = None
) -> bytes:
    """The DER certificate ``host:port`` presents in a TLS handshake.

    With ``cafile`` the chain must verify against it (host names are not checked: the
    device reaches a discovered service by address); without, any certificate is read.

    Raises:
        ssl.SSLCertVerificationError: ``cafile`` was given and the chain does not verify.
        DiscoveryError: no TLS handshake within ``timeout_s`` (refused, not TLS, ...).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if cafile is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=str(cafile.expanduser()))
    ctx.set_alpn_protocols(["h2"])  # what a gRPC server expects to see
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=None), timeout_s
        )
    except ssl.SSLCertVerificationError:
        raise
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise DiscoveryError(f"no TLS handshake with {host}:{port}: {exc!r}") from exc
    try:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
    finally:
        # No TLS shutdown: waiting for the peer's close_notify could hang (up to
        # asyncio's 30 s SSL shutdown timeout); nothing was sent, so just drop it.
        writer.transport.abort()
    if not der:
        raise DiscoveryError(f"{host}:{port} presented no certificate")
    return bytes(der)


@dataclass(frozen=True)
class TrustedPeer:
    """A service that proved its identity, and how to build its gRPC channel.

    Attributes:
        fingerprint: of the certificate it presented (equal to the advertised one).
        how: ``ca`` (chains to the device's CA bundle) or ``pinned``.
        root_certificates: PEM trust anchors for the channel: the CA bundle, or the
            pinned certificate itself (a self-signed certificate is its own anchor).
        server_name: the name the channel verifies the certificate for, when the
            address is not among the certificate's names (None: the address itself).
    """

    fingerprint: str
    how: Literal["ca", "pinned"]
    root_certificates: bytes
    server_name: str | None


async def verify_peer(
    host: str,
    port: int,
    *,
    advertised: str | None,
    cafile: Path | None,
    pinned: Collection[str],
    timeout_s: float,
) -> TrustedPeer:
    """Check that ``host:port`` holds the certificate it advertised, and that the device
    trusts it.

    Raises:
        UntrustedServiceError: another certificate than advertised, or one neither
            signed by ``cafile`` nor pinned (the service is not to be given the token).
        DiscoveryError: no TLS handshake (refused, timed out, not TLS).
    """
    ca_ok = False
    if cafile is not None:
        try:
            der = await peer_certificate(host, port, timeout_s=timeout_s, cafile=cafile)
            ca_ok = True
        except ssl.SSLCertVerificationError as exc:
            log.info("%s:%d: certificate not signed by the CA: %s", host, port, exc.verify_message)
            der = await peer_certificate(host, port, timeout_s=timeout_s)
    else:
        der = await peer_certificate(host, port, timeout_s=timeout_s)
    fp = fingerprint(der)
    if advertised is None or fp != advertised.lower():
        raise UntrustedServiceError(
            f"{host}:{port} presents certificate sha256:{fp}, but advertised "
            f"sha256:{advertised}; rejected (spoofed advertisement or another service)"
        )
    if fp in pinned:
        roots = _pem_file(cafile) if ca_ok and cafile is not None else _pem(der)
        return TrustedPeer(fp, "pinned", roots, _server_name(der, host))
    if ca_ok and cafile is not None:
        return TrustedPeer(fp, "ca", _pem_file(cafile), _server_name(der, host))
    raise UntrustedServiceError(
        f"{host}:{port} certificate sha256:{fp} is "
        + ("not signed by device.discovery.root_certificates" if cafile else "not trusted")
        + " and not in device.discovery.pinned_fingerprints; rejected"
    )


def _pem(der: bytes) -> bytes:
    return ssl.DER_cert_to_PEM_cert(der).encode()


def _pem_file(path: Path) -> bytes:
    return path.expanduser().read_bytes()


def _server_name(der: bytes, host: str) -> str | None:
    """The name gRPC should verify the certificate for: None when ``host`` (an address)
    is among its IP names, else its first DNS name (the identity was already proved
    by fingerprint and trust anchor; the name only has to be one the certificate holds)."""
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - cryptography comes with the device extra
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address in san.get_values_for_type(x509.IPAddress):
        return None
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else None
