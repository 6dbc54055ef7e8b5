"""The request id across the wire: sent in ``x-request-id`` metadata, bound on arrival.

The client side (:func:`request_metadata`) sends the id bound on the device
(:mod:`edgecloud.common.logs`); the server side (:class:`RequestIdInterceptor`, in
every server :func:`~edgecloud.transport.create_server` builds) binds the id a call
carries for the call's task, so every line the servicer logs names it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from grpc import aio

from edgecloud.common.logs import REQUEST_ID_HEADER, clean_request_id, set_request_id
from edgecloud.transport._handlers import wrap_handler

__all__ = ["RequestIdInterceptor", "request_metadata"]


def request_metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``request_id``."""
    return ((REQUEST_ID_HEADER, request_id),)


def _request_id(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            return clean_request_id(value)
    return None


class RequestIdInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Binds the ``x-request-id`` of each call (printable ASCII, cut at 128 characters)
    while its handler runs; a call without one is left unbound (the servicer may bind
    its own)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        request_id = _request_id(handler_call_details.invocation_metadata)
        if handler is None or request_id is None:
            return handler
        return wrap_handler(handler, start=lambda: set_request_id(request_id))
