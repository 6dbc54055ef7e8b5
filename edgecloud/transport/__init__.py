"""gRPC plumbing between devices and the cloud service.

The only package that converts between protobuf messages and edgecloud's plain
types, and that translates ``grpc.RpcError`` into the error tree. Importing it
loads grpc; ``import edgecloud`` does not.
"""

from __future__ import annotations

from edgecloud.transport._adapters import AdapterOffer, AdapterSyncClient
from edgecloud.transport._auth import TokenAuthInterceptor, hash_token, new_token
from edgecloud.transport._client import CloudClient, ServiceInfo, service_config
from edgecloud.transport._status import RETRYABLE_CODES, error_from_rpc, status_for

__all__ = [
    "RETRYABLE_CODES",
    "AdapterOffer",
    "AdapterSyncClient",
    "CloudClient",
    "ServiceInfo",
    "TokenAuthInterceptor",
    "error_from_rpc",
    "hash_token",
    "new_token",
    "service_config",
    "status_for",
]
