"""A server interceptor that turns undecodable requests into ``INVALID_ARGUMENT``.

grpc.aio deserializes a request before any handler code runs, and a malformed
message surfaces as ``UNKNOWN`` with the parser's exception text in the details.
This interceptor moves deserialization into the handler, so bad bytes get
``INVALID_ARGUMENT: malformed request`` and nothing about the server's internals.

A server-streaming handler is either an async generator or a coroutine that
writes with ``context.write()`` (grpc's own health ``Watch``); the wrapper is of
the same kind, since grpc.aio serves the two differently.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

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

        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def unary_stream(raw: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
                request = await decode(raw, context)
                async for item in stream(request, context):
                    yield item

            async def unary_writer(raw: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
                return await stream(await decode(raw, context), context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream if inspect.isasyncgenfunction(stream) else unary_writer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            upload = handler.stream_unary

            async def stream_unary(
                raws: AsyncIterator[bytes], context: aio.ServicerContext[Any, Any]
            ) -> Any:
                async def requests() -> AsyncIterator[Any]:
                    async for raw in raws:
                        yield await decode(raw, context)

                return await upload(requests(), context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, response_serializer=handler.response_serializer
            )
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(raw: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
                return await unary(await decode(raw, context), context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, response_serializer=handler.response_serializer
            )
        return handler
