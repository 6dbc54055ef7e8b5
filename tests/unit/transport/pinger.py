"""A tiny real service for the transport tests: SplitService's Ping, on a server made by
``create_server`` on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from edgecloud._proto.v1 import split_pb2 as spb
from edgecloud._proto.v1 import split_pb2_grpc as spb_grpc
from edgecloud.transport import AuthConfig, GrpcServer, TlsConfig, create_server, hash_token
from edgecloud.transport._auth import CURRENT_DEVICE

SERVICE = spb.DESCRIPTOR.services_by_name["SplitService"].full_name
TOKEN = "s3cret-token"
AUTH = AuthConfig(tokens={"robot-1": hash_token(TOKEN)})


@dataclass
class Pinger(spb_grpc.SplitServiceServicer):  # type: ignore[misc]
    """Ping answers after ``delay_s``; the first ``fail_first`` calls get UNAVAILABLE."""

    delay_s: float = 0.0
    fail_first: int = 0
    calls: int = 0
    devices: list[str | None] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)

    async def Ping(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        self.calls += 1
        self.devices.append(CURRENT_DEVICE.get())
        self.authorization.append(dict(context.invocation_metadata()).get("authorization"))
        if self.calls <= self.fail_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        await asyncio.sleep(self.delay_s)
        return spb.PingReply(payload=b"\0" * request.reply_bytes)


@asynccontextmanager
async def serving(
    pinger: Pinger, *, tls: TlsConfig | None = None, **kwargs: Any
) -> AsyncIterator[GrpcServer]:
    """A started server with ``pinger`` (plain text unless ``tls``), stopped at the end."""
    server = create_server(
        host="127.0.0.1", port=0, tls=tls, insecure=tls is None, section="test", **kwargs
    )
    server.add_service(SERVICE, lambda s: spb_grpc.add_SplitServiceServicer_to_server(pinger, s))
    await server.start()
    try:
        yield server
    finally:
        await server.server.stop(0)


async def ping(channel: Any, *, payload: int = 0, timeout: float = 5.0) -> Any:
    """One Ping on an aio channel."""
    stub = spb_grpc.SplitServiceStub(channel)
    return await stub.Ping(spb.PingRequest(payload=b"\0" * payload), timeout=timeout)
