"""gRPC status codes <-> the error tree, on both sides of the wire.

The server side (:func:`status_for`) turns an exception into a code and a
message safe to show a client: messages of errors raised on purpose (bad
request, unknown adapter, overload) are written for the caller; anything else
becomes ``INTERNAL`` with a fixed text, and the traceback stays in the server log.
"""

from __future__ import annotations

import grpc

from edgecloud.errors import (
    AuthError,
    DeadlineExceededError,
    EdgeCloudError,
    InvalidRequestError,
    OverloadedError,
    RemoteError,
    TransportError,
    UnknownAdapterError,
)

__all__ = ["RETRYABLE_CODES", "error_from_rpc", "status_for"]

RETRYABLE_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
"""Codes the client channel retries (gRPC retry policy). A call that already sent
tokens is never retried by gRPC: the stream's response headers commit it."""

INTERNAL_MESSAGE = "internal error"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for an exception raised by a handler."""
    if isinstance(exc, UnknownAdapterError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, InvalidRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, OverloadedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, AuthError):
        return grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def error_from_rpc(exc: grpc.RpcError, target: str = "") -> EdgeCloudError:
    """Translate a failed call into the error tree (raise it ``from exc``)."""
    # grpc.aio's AioRpcError has code()/details() but is not a grpc.Call.
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = (details_fn() if callable(details_fn) else None) or ""
    where = f" ({target})" if target else ""
    name = code.name if code is not None else "UNKNOWN"
    text = f"{name}{where}: {details}" if details else f"{name}{where}"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return InvalidRequestError(details or text)
    if code == grpc.StatusCode.NOT_FOUND:
        return UnknownAdapterError(details or text)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthError(text)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return OverloadedError(text)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(text)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED):
        return TransportError(text)
    return RemoteError(text)
