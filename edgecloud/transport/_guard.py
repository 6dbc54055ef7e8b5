"""A server interceptor that turns undecodable requests into ``INVALID_ARGUMENT``.

grpc.aio deserializes a request before any handler code runs, and a malformed
message surfaces as ``UNKNOWN`` with the parser's exception text in the details.
This interceptor moves deserialization into the handler, so bad bytes get
``INVALID_ARGUMENT: malformed request`` and nothing about the server's internals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from edgecloud.transport._handlers import wrap_handler

__all__ = ["DecodeGuardInterceptor"]

MALFORMED = "malformed request"


class DecodeGuardInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Parses requests (unary and client-streamed) in the handler; bad bytes fail cleanly."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        async def decode(raw: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                return parse(raw)
            except Exception:  # noqa: BLE001 - DecodeError, or whatever a parser raises
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)

        return wrap_handler(handler, prepare=decode, request_deserializer=None)
