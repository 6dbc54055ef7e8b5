"""gRPC status codes <-> the error tree, on both sides of the wire, for every service.

The server side (:func:`status_for`, :func:`abort`) turns an exception into a
code and a message safe to show a client: messages of errors raised on purpose
(bad request, unknown adapter or model, overload) are written for the caller;
anything else becomes ``INTERNAL`` with a fixed text, and the traceback stays in
the server log.

``NOT_FOUND`` says which kind of thing is missing by how its message starts:
``unknown adapter`` or ``unknown model`` (:func:`status_for` puts the kind in
front when the message does not already start with it). The client side
(:func:`error_from_rpc`) reads it back as :class:`UnknownAdapterError` or
:class:`UnknownModelError`, and any other ``NOT_FOUND`` (a foreign server) as
:class:`NotFoundError`. The kind lives in the message, not in trailing
metadata, so that every servicer gets it from :func:`status_for` alone and
plain gRPC clients (grpcurl, Triton's) show it too.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from edgecloud.common.metrics import metrics
from edgecloud.errors import (
    AuthError,
    DeadlineExceededError,
    EdgeCloudError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RemoteError,
    TransportError,
    UnknownAdapterError,
    UnknownModelError,
)

__all__ = [
    "INTERNAL_MESSAGE",
    "NOT_FOUND_KINDS",
    "RETRYABLE_CODES",
    "abort",
    "count_error",
    "error_from_rpc",
    "status_for",
]

RETRYABLE_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
"""Codes the client channel retries (gRPC retry policy). A call that already sent
tokens is never retried by gRPC: the stream's response headers commit it."""

INTERNAL_MESSAGE = "internal error"

NOT_FOUND_KINDS: tuple[tuple[str, type[NotFoundError]], ...] = (
    ("unknown adapter", UnknownAdapterError),
    ("unknown model", UnknownModelError),
)
"""How a ``NOT_FOUND`` message starts, for each kind of missing thing."""


def _not_found_message(exc: NotFoundError) -> str:
    message = str(exc)
    for kind, cls in NOT_FOUND_KINDS:
        if isinstance(exc, cls):
            return message if message.lower().startswith(kind) else f"{kind}: {message}"
    return message


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for an exception raised by a handler."""
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, _not_found_message(exc)
    if isinstance(exc, InvalidRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, OverloadedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, AuthError):
        return grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"
    if isinstance(exc, TransportError) and exc.retryable:
        # The service lost a part it forwards to (a Ray Serve replica): as a dead cloud.
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


async def abort(context: Any, exc: BaseException, *, rpc: str, log: logging.Logger) -> NoReturn:
    """End the call with :func:`status_for` of ``exc``, logging it on the server only.

    Errors raised on purpose are logged at INFO; anything else at ERROR with its
    traceback, which never reaches the client.

    Args:
        context: the call's ``grpc.aio.ServicerContext``.
        exc: what the handler raised.
        rpc: the method's name, for the log.
        log: the service's logger.
    """
    code, message = status_for(exc)
    count_error(rpc, code)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed", rpc, exc_info=exc)
    else:
        log.info("%s rejected: %s: %s", rpc, code.name, message)
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def count_error(rpc: str, code: grpc.StatusCode) -> None:
    """One call of ``rpc`` ended with ``code``, in ``edgecloud_cloud_errors_total``."""
    metrics().errors.labels(rpc, code.name).inc()


def error_from_rpc(
    exc: grpc.RpcError, target: str = "", *, plaintext: bool = False
) -> EdgeCloudError:
    """Translate a failed call into the error tree (raise it ``from exc``).

    Args:
        exc: the failed call.
        target: the service's address, named in the message.
        plaintext: the call went without TLS; an ``UNAVAILABLE`` then says so, since a
            service that requires TLS just closes such a connection.
    """
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
        for kind, cls in NOT_FOUND_KINDS:
            if details.lower().startswith(kind):
                return cls(details)
        return NotFoundError(details or text)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthError(text)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return OverloadedError(text)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(text)
    if code == grpc.StatusCode.UNAVAILABLE and plaintext:
        return TransportError(f"{text} (sent as plain text; does the service require TLS?)")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED):
        return TransportError(text)
    return RemoteError(text)
