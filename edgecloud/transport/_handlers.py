"""Rewrapping a gRPC method handler: one place that knows the handler kinds.

Server interceptors that run code inside the call (setting the caller's identity,
parsing requests) rebuild the handler around the servicer's. A server-streaming
handler is either an async generator or a coroutine that writes with
``context.write()`` (grpc's own health ``Watch``); the wrapper is of the same kind,
since grpc.aio serves the two differently.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

__all__ = ["Prepare", "wrap_handler"]

Prepare = Callable[[Any, "aio.ServicerContext[Any, Any]"], Awaitable[Any]]
"""Turns one received request into what the servicer gets (e.g. parses raw bytes)."""

_KEEP: Any = object()


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    *,
    start: Callable[[], object] | None = None,
    prepare: Prepare | None = None,
    request_deserializer: Any = _KEEP,
) -> grpc.RpcMethodHandler:
    """The same method, with ``start()`` run in the call's task before the servicer and
    each request passed through ``prepare``.

    Args:
        handler: what the server would run.
        start: called once at the start of each call, inside its context.
        prepare: applied to every request (each one of a client stream).
        request_deserializer: replaces the handler's (None: the raw bytes reach
            ``prepare``); by default it is kept.

    Unary-unary, unary-stream and stream-unary handlers are wrapped; any other kind
    is returned as it is.
    """
    deserializer = (
        handler.request_deserializer if request_deserializer is _KEEP else request_deserializer
    )
    kinds = {
        "request_deserializer": deserializer,
        "response_serializer": handler.response_serializer,
    }

    async def first(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if start is not None:
            start()
        return raw if prepare is None else await prepare(raw, context)

    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async for item in inner_stream(await first(raw, context), context):
                yield item

        async def writer(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            return await inner_stream(await first(raw, context), context)

        kind = stream if inspect.isasyncgenfunction(inner_stream) else writer
        return grpc.unary_stream_rpc_method_handler(kind, **kinds)
    if handler.stream_unary is not None:
        inner_upload = handler.stream_unary

        async def upload(raws: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> Any:
            if start is not None:
                start()
            if prepare is None:
                return await inner_upload(raws, context)

            async def requests() -> AsyncIterator[Any]:
                async for raw in raws:
                    yield await prepare(raw, context)

            return await inner_upload(requests(), context)

        return grpc.stream_unary_rpc_method_handler(upload, **kinds)
    if handler.unary_unary is not None:
        inner_unary = handler.unary_unary

        async def unary(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            return await inner_unary(await first(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary, **kinds)
    return handler
