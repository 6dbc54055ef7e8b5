"""gRPC plumbing between devices and the cloud services.

The only package that converts between protobuf messages and edgecloud's plain
types, that builds gRPC channels (:func:`create_channel`) and servers
(:func:`create_server`), and that maps gRPC status codes to and from the error
tree (:func:`status_for`, :func:`error_from_rpc`).

The one plain-text rule (:func:`check_plaintext`): plain text is used only when
asked for (``tls=False``, ``--insecure``, ``cloud.insecure``,
``split.serve.insecure``) and only with a loopback address: ``127.0.0.0/8``,
``::1`` or the name ``localhost``.

Names load on first use: ``import edgecloud`` and the settings (which use
:class:`TlsConfig` and :class:`AuthConfig`) do not load grpc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.common.lazy import lazy_attributes

if TYPE_CHECKING:
    from edgecloud.transport._adapters import AdapterOffer, AdapterSyncClient
    from edgecloud.transport._auth import TokenAuthInterceptor, hash_token, new_token
    from edgecloud.transport._channel import (
        check_plaintext,
        create_channel,
        is_loopback,
        service_config,
    )
    from edgecloud.transport._client import CloudClient, ServiceInfo
    from edgecloud.transport._server import (
        GrpcServer,
        create_server,
        server_credentials,
        stop_signals,
    )
    from edgecloud.transport._settings import AuthConfig, TlsConfig
    from edgecloud.transport._status import RETRYABLE_CODES, abort, error_from_rpc, status_for

__all__ = [
    "RETRYABLE_CODES",
    "AdapterOffer",
    "AdapterSyncClient",
    "AuthConfig",
    "CloudClient",
    "GrpcServer",
    "ServiceInfo",
    "TlsConfig",
    "TokenAuthInterceptor",
    "abort",
    "check_plaintext",
    "create_channel",
    "create_server",
    "error_from_rpc",
    "hash_token",
    "is_loopback",
    "new_token",
    "server_credentials",
    "service_config",
    "status_for",
    "stop_signals",
]

_WHERE = {
    "RETRYABLE_CODES": "edgecloud.transport._status",
    "AdapterOffer": "edgecloud.transport._adapters",
    "AdapterSyncClient": "edgecloud.transport._adapters",
    "AuthConfig": "edgecloud.transport._settings",
    "CloudClient": "edgecloud.transport._client",
    "GrpcServer": "edgecloud.transport._server",
    "ServiceInfo": "edgecloud.transport._client",
    "TlsConfig": "edgecloud.transport._settings",
    "TokenAuthInterceptor": "edgecloud.transport._auth",
    "abort": "edgecloud.transport._status",
    "check_plaintext": "edgecloud.transport._channel",
    "create_channel": "edgecloud.transport._channel",
    "create_server": "edgecloud.transport._server",
    "error_from_rpc": "edgecloud.transport._status",
    "hash_token": "edgecloud.transport._auth",
    "is_loopback": "edgecloud.transport._channel",
    "new_token": "edgecloud.transport._auth",
    "server_credentials": "edgecloud.transport._server",
    "service_config": "edgecloud.transport._channel",
    "status_for": "edgecloud.transport._status",
    "stop_signals": "edgecloud.transport._server",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
