"""The one server builder: TLS and mTLS, token auth, health per service, reflection, drain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecloud.errors import AuthError, ConfigError, EdgeCloudError, TransportError
from edgecloud.transport import (
    TlsConfig,
    create_channel,
    create_server,
    error_from_rpc,
    server_credentials,
)
from tests.pki import Pki, make_pki
from tests.unit.transport.pinger import AUTH, SERVICE, TOKEN, Pinger, ping, serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(
    ("tls", "host", "insecure", "message"),
    [
        (None, "127.0.0.1", False, r"split\.serve\.tls\.cert and split\.serve\.tls\.key are req"),
        (TlsConfig(), "127.0.0.1", False, "set split.serve.insecure = true"),
        (None, "0.0.0.0", True, r"split\.serve\.insecure: plain text .*loopback"),
        (TlsConfig(key=Path("/k.pem")), "0.0.0.0", False, "must be set together"),
        (TlsConfig(cert=Path("/nope/c.pem"), key=Path("/nope/k.pem")), "0.0.0.0", False,
         r"split\.serve\.tls\.key: cannot read /nope/k\.pem"),
    ],
)  # fmt: skip
def test_server_security_is_checked_before_anything_listens(
    tls: TlsConfig | None, host: str, insecure: bool, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        server_credentials(tls, host=host, insecure=insecure, section="split.serve")


def test_tls_with_token_auth(pki: Pki) -> None:
    pinger = Pinger()
    tls = TlsConfig(cert=pki.cert, key=pki.key)

    async def call(target: str, **channel: object) -> EdgeCloudError | None:
        try:
            async with create_channel(target, aio=True, **channel) as ch:  # type: ignore[arg-type]
                await ping(ch)
        except grpc.aio.AioRpcError as exc:
            return error_from_rpc(exc, target)
        return None

    async def scenario() -> dict[str, EdgeCloudError | None]:
        async with serving(pinger, tls=tls, auth=AUTH) as server:
            target = f"127.0.0.1:{server.port}"
            ca = pki.ca
            return {
                "ok": await call(target, root_certificates=ca, token=TOKEN),
                "localhost": await call(f"localhost:{server.port}", root_certificates=ca,
                                        token=TOKEN),
                "no token": await call(target, root_certificates=ca),
                "wrong token": await call(target, root_certificates=ca, token="wrong"),
                "plain text": await call(target, tls=False, token=TOKEN),
                "unknown CA": await call(target, token=TOKEN),
            }  # fmt: skip

    results = asyncio.run(scenario())
    assert results["ok"] is None and results["localhost"] is None
    assert pinger.devices == ["robot-1", "robot-1"]
    for case in ("no token", "wrong token"):
        err = results[case]
        assert type(err) is AuthError and "UNAUTHENTICATED" in str(err), case
    for case in ("plain text", "unknown CA"):
        err = results[case]
        assert type(err) is TransportError and "UNAVAILABLE" in str(err), case


def test_mtls_needs_a_client_certificate(pki: Pki) -> None:
    tls = TlsConfig(cert=pki.cert, key=pki.key, client_ca=pki.ca)

    async def scenario() -> grpc.aio.AioRpcError:
        async with serving(Pinger(), tls=tls) as server:
            target = f"127.0.0.1:{server.port}"
            async with create_channel(
                target, aio=True, root_certificates=pki.ca,
                client_cert=pki.client_cert, client_key=pki.client_key,
            ) as ch:  # fmt: skip
                await ping(ch)
            async with create_channel(target, aio=True, root_certificates=pki.ca) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ping(ch, timeout=3)
                return info.value

    assert asyncio.run(scenario()).code() == grpc.StatusCode.UNAVAILABLE


def test_health_is_open_per_service_and_reflection_lists_the_services() -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def scenario() -> tuple[list[int], list[str]]:
        async with serving(Pinger(), auth=AUTH) as server:
            target = f"127.0.0.1:{server.port}"
            statuses = []
            async with create_channel(target, aio=True, tls=False) as anonymous:
                health = health_pb2_grpc.HealthStub(anonymous)
                for name in ("", SERVICE):
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                    statuses.append(reply.status)
                await server.set_serving(SERVICE, False)
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
                statuses.append(reply.status)
            async with create_channel(target, aio=True, tls=False, token=TOKEN) as ch:
                stub = reflection_pb2_grpc.ServerReflectionStub(ch)
                request = reflection_pb2.ServerReflectionRequest(list_services="")
                async for reply in stub.ServerReflectionInfo(iter([request])):
                    names = [s.name for s in reply.list_services_response.service]
            return statuses, names

    statuses, names = asyncio.run(scenario())
    assert statuses == [SERVING, SERVING, NOT_SERVING]
    assert set(names) == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_drain_turns_health_not_serving_first_and_lets_calls_finish() -> None:
    pinger = Pinger(delay_s=0.5)

    async def scenario() -> list[object]:
        server = create_server(host="127.0.0.1", port=0, tls=None, insecure=True, section="t")
        server.add_service(SERVICE, _adder(pinger))
        await server.start()
        events: list[object] = []
        async with create_channel(f"127.0.0.1:{server.port}", aio=True, tls=False) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
            events.append((await watch.read()).status)
            in_flight = asyncio.ensure_future(ping(ch))
            while pinger.calls == 0:
                await asyncio.sleep(0.01)
            drain = asyncio.ensure_future(
                server.drain(5.0, draining=lambda: events.append("draining"))
            )
            events.append((await watch.read()).status)
            await asyncio.sleep(0.05)
            try:
                await ping(ch, timeout=2)
                events.append("new call served")
            except grpc.aio.AioRpcError as exc:
                events.append(exc.code())
            await in_flight
            events.append("in-flight call done")
            watch.cancel()
            await drain
        return events

    events = asyncio.run(scenario())
    assert events[:3] == [SERVING, "draining", NOT_SERVING]
    assert events[3] == grpc.StatusCode.UNAVAILABLE
    assert events[4] == "in-flight call done"


def test_a_port_in_use_is_a_config_error() -> None:
    async def scenario() -> None:
        async with serving(Pinger()) as first:
            second = create_server(
                host="127.0.0.1", port=first.port, tls=None, insecure=True, section="t"
            )
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.port}"):
                await second.start()

    asyncio.run(scenario())


def _adder(pinger: Pinger):  # type: ignore[no-untyped-def]
    from edgecloud._proto.v1 import split_pb2_grpc as spb_grpc

    return lambda s: spb_grpc.add_SplitServiceServicer_to_server(pinger, s)


def test_a_streaming_handler_that_writes_keeps_working_behind_auth_and_the_guard() -> None:
    from edgecloud._proto.v1 import adapters_pb2 as pb
    from edgecloud._proto.v1 import adapters_pb2_grpc as pb_grpc
    from edgecloud.transport._auth import CURRENT_DEVICE

    class Writer(pb_grpc.AdapterSyncServicer):  # type: ignore[misc]
        """Streams with context.write() from a coroutine, as grpc's health Watch does."""

        async def WatchAdapters(self, request: pb.WatchRequest, context: object) -> None:
            device = CURRENT_DEVICE.get() or ""
            await context.write(pb.AdapterOffer(adapter_id=request.adapter_id, key_id=device))  # type: ignore[attr-defined]

    async def scenario() -> pb.AdapterOffer:
        server = create_server(
            host="127.0.0.1", port=0, tls=None, insecure=True, section="t", auth=AUTH
        )
        name = pb.DESCRIPTOR.services_by_name["AdapterSync"].full_name
        server.add_service(name, lambda s: pb_grpc.add_AdapterSyncServicer_to_server(Writer(), s))
        await server.start()
        try:
            target = f"127.0.0.1:{server.port}"
            async with create_channel(target, aio=True, tls=False, token=TOKEN) as ch:
                call = pb_grpc.AdapterSyncStub(ch).WatchAdapters(
                    pb.WatchRequest(adapter_id="default"), timeout=5
                )
                return await call.read()
        finally:
            await server.server.stop(0)

    offer = asyncio.run(scenario())
    assert (offer.adapter_id, offer.key_id) == ("default", "robot-1")
