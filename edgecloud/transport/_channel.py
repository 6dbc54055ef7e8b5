"""The one builder of gRPC channels (sync and aio), and the one plain-text rule.

Every client in edgecloud (:class:`~edgecloud.transport.CloudClient`,
:class:`~edgecloud.transport.AdapterSyncClient`,
:class:`~edgecloud.split.SplitClient`) gets its channel from
:func:`create_channel`:

* TLS with the system roots or ``root_certificates``, and a client certificate
  for mTLS;
* plain text only when asked for (``tls=False``) and only to a loopback address
  (:func:`check_plaintext`). gRPC's *local* credentials carry it, so gRPC itself
  also checks that the peer is on this host;
* the device's bearer token as call credentials (``authorization: Bearer ...``
  on every call). gRPC sends call credentials only over TLS or local
  credentials, so a token never crosses a network in clear;
* message size limits, keep-alive pings, and gRPC's own retry policy through
  the service config (:func:`service_config`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from edgecloud.errors import ConfigError
from edgecloud.transport._status import RETRYABLE_CODES

__all__ = ["check_plaintext", "create_channel", "is_loopback", "service_config"]

LOOPBACK_NAMES = ("localhost",)
"""Host names taken as loopback. ``localhost`` counts: RFC 6761 reserves it for the
loopback interface, and a plain-text channel uses gRPC's local credentials, which
refuse to connect should the name resolve to anything else."""


def _host(address: str) -> str:
    """The host of ``host:port``, ``[v6]:port`` or a bare host/IP address."""
    address = address.strip()
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    try:
        ipaddress.ip_address(address)
    except ValueError:
        host, sep, _port = address.rpartition(":")
        return host if sep else address
    return address  # a bare IPv6 address has colons but no port


def is_loopback(address: str) -> bool:
    """Whether ``address`` (a host, or a ``host:port`` target) is a loopback address.

    Loopback: any IP address in ``127.0.0.0/8``, ``::1``, and the name ``localhost``.
    A target with a gRPC scheme (``dns:///...``, ``unix:...``) is not recognized.
    """
    host = _host(address)
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(address: str, *, setting: str | None = None) -> None:
    """The one plain-text rule: plain text (no TLS) only with a loopback address.

    Clients apply it to their target, servers to the host they listen on.

    Args:
        address: ``host:port`` target, or the host a server binds.
        setting: the setting that asked for plain text, named in the error.

    Raises:
        ConfigError: ``address`` is not a loopback address.
    """
    if not is_loopback(address):
        where = f"{setting}: " if setting else ""
        raise ConfigError(
            f"{where}plain text (no TLS) is allowed only with a loopback address "
            f"(127.0.0.1, ::1, localhost), not {address!r}"
        )


def service_config(
    *,
    services: Sequence[str] = (),
    max_attempts: int = 4,
    initial_backoff_s: float = 0.2,
    max_backoff_s: float = 5.0,
) -> str:
    """A channel service config whose retry policy retries :data:`RETRYABLE_CODES`.

    Jittered exponential backoff; gRPC never retries a call once the server has
    sent response headers (a stream that delivered tokens is never repeated).

    Args:
        services: full service names the policy applies to; empty: every method.
        max_attempts: attempts in all, at least 2.
    """
    names: list[dict[str, str]] = [{"service": s} for s in services] or [{}]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": max(2, max_attempts),
                        "initialBackoff": f"{initial_backoff_s}s",
                        "maxBackoff": f"{max_backoff_s}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": list(RETRYABLE_CODES),
                    },
                }
            ]
        }
    )


def create_channel(
    target: str,
    *,
    aio: bool,
    tls: bool = True,
    root_certificates: bytes | Path | None = None,
    client_cert: bytes | Path | None = None,
    client_key: bytes | Path | None = None,
    token: str | None = None,
    max_message_bytes: int = 1 << 20,
    keepalive_s: float | None = None,
    service_config: str | None = None,
    interceptors: Sequence[Any] = (),
    server_name: str | None = None,
) -> Any:
    """A gRPC channel to ``target``: ``grpc.aio.Channel`` if ``aio``, else ``grpc.Channel``.

    Args:
        target: ``host:port``.
        aio: an asyncio channel (bind it in the loop that uses it) or a blocking one.
        tls: TLS (default); False is plain text, to a loopback target only.
        root_certificates: PEM CA bundle (bytes or a file) to trust instead of the
            system roots.
        client_cert, client_key: PEM pair (bytes or files) for mTLS; both or neither.
        token: this device's bearer token, sent with every call.
        max_message_bytes: largest message sent or received.
        keepalive_s: ping an idle connection this often to find dead links; None: no pings.
        service_config: JSON service config (:func:`service_config`); enables gRPC's
            retries. None: no retries.
        interceptors: client interceptors, of the kind the channel type takes.
        server_name: the name the server's certificate is verified for, when it is not
            the target's host (a service reached by address, whose certificate names its
            host name); TLS only.

    Raises:
        ConfigError: plain text to a non-loopback target, TLS files given without TLS,
            a half client pair, or a file that cannot be read.
    """
    if (client_cert is None) != (client_key is None):
        raise ConfigError("client_cert and client_key must be given together (mTLS)")
    if tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_pem(root_certificates, "root_certificates"),
            private_key=_pem(client_key, "client_key"),
            certificate_chain=_pem(client_cert, "client_cert"),
        )
    else:
        if root_certificates is not None or client_cert is not None:
            raise ConfigError("a CA or client certificate was given, but TLS is off")
        check_plaintext(target)
        credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if service_config else 0),
    ]
    if service_config:
        options.append(("grpc.service_config", service_config))
    if server_name and tls:
        options.append(("grpc.ssl_target_name_override", server_name))
    if keepalive_s is not None:
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    if aio:
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=list(interceptors) or None
        )
    channel = grpc.secure_channel(target, credentials, options=options)
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel


def _pem(value: bytes | Path | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {value}: {exc.strerror}") from exc
