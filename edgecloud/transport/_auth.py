"""Per-device bearer tokens: hashing, and the server interceptor that checks them.

Tokens are stored as sha256 hex digests only (a leaked config does not leak a
token) and compared in constant time. A call without a well-formed
``authorization: Bearer <token>`` header, or with a token no device owns, gets
``UNAUTHENTICATED``; a known device asking for an adapter it may not use gets
``PERMISSION_DENIED``. Neither message says which part was wrong. The health
service stays open so load balancers can probe without a token.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc import aio

from edgecloud.transport._handlers import wrap_handler
from edgecloud.transport._status import count_error

__all__ = ["CURRENT_DEVICE", "TokenAuthInterceptor", "hash_token", "new_token"]

CURRENT_DEVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "edgecloud_device", default=None
)
"""The authenticated device id of the call being handled (None without auth)."""

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def hash_token(token: str) -> str:
    """The sha256 hex digest stored in ``cloud.auth.tokens`` for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


def _denied(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    async def abort(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator, as the method expects

    async def abort_bidi(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator, as the method expects

    async def abort_upload(requests: Any, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            abort_upload,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            abort_bidi,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            abort_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _with_device(handler: grpc.RpcMethodHandler, device: str) -> grpc.RpcMethodHandler:
    """The same handler, run with ``CURRENT_DEVICE`` set to ``device``."""
    return wrap_handler(handler, start=lambda: CURRENT_DEVICE.set(device))


class TokenAuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Checks the bearer token of every call against stored sha256 digests.

    Args:
        token_hashes: device id -> sha256 hex digest of its token.
    """

    def __init__(self, token_hashes: Mapping[str, str]) -> None:
        self._by_hash = {digest: device for device, digest in token_hashes.items()}

    def _device_for(self, token: str) -> str | None:
        digest = hash_token(token)
        found = None
        for stored, device in self._by_hash.items():
            # Compare with every digest, in constant time each, so timing says nothing.
            if hmac.compare_digest(stored, digest):
                found = device
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        device = self._device_for(token) if token is not None else None
        if device is None:
            count_error(method.rsplit("/", 1)[-1], grpc.StatusCode.UNAUTHENTICATED)
            return _denied(handler, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
        return _with_device(handler, device)
