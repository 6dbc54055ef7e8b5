"""The one channel builder and the one plain-text rule, against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from edgecloud.errors import ConfigError
from edgecloud.transport import (
    check_plaintext,
    create_channel,
    error_from_rpc,
    is_loopback,
    service_config,
)
from tests.unit.transport.pinger import AUTH, TOKEN, Pinger, ping, serving


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("LOCALHOST:1", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("127.0.0.1", True),
        ("localhost", True),
        ("10.0.0.7:50051", False),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("cloud.example:50051", False),
        ("localhost.example.com:1", False),
        ("dns:///localhost:50051", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_plain_text_off_loopback_is_refused_naming_the_setting() -> None:
    check_plaintext("127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"cloud\.insecure: plain text .* not '0\.0\.0\.0'"):
        check_plaintext("0.0.0.0", setting="cloud.insecure")


@pytest.mark.parametrize("aio", [True, False])
def test_plain_text_channels_only_to_loopback_token_or_not(aio: bool) -> None:
    for token in (None, "t0ken"):
        with pytest.raises(ConfigError, match="loopback"):
            create_channel("10.1.2.3:50051", aio=aio, tls=False, token=token)


def test_inconsistent_tls_material_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TLS is off"):
        create_channel("127.0.0.1:1", aio=False, tls=False, root_certificates=b"pem")
    with pytest.raises(ConfigError, match="together"):
        create_channel("127.0.0.1:1", aio=False, client_cert=b"pem")
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"root_certificates: cannot read .*nope\.pem"):
        create_channel("127.0.0.1:1", aio=False, root_certificates=missing)


def test_the_token_travels_as_call_credentials_on_plain_loopback() -> None:
    pinger = Pinger()

    async def scenario() -> None:
        async with serving(pinger, auth=AUTH) as server:
            target = f"127.0.0.1:{server.port}"
            async with create_channel(target, aio=True, tls=False, token=TOKEN) as channel:
                await ping(channel)
            # the blocking channel, from a worker thread: the server runs on this loop
            await asyncio.to_thread(_sync_ping, f"localhost:{server.port}", TOKEN)
            async with create_channel(target, aio=True, tls=False) as anonymous:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ping(anonymous)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(scenario())
    assert pinger.authorization[:2] == [f"Bearer {TOKEN}"] * 2
    assert pinger.devices[:2] == ["robot-1", "robot-1"]
    assert pinger.calls == 2  # the anonymous call never reached the handler


def _sync_ping(target: str, token: str) -> None:
    from edgecloud._proto.v1 import split_pb2 as spb
    from edgecloud._proto.v1 import split_pb2_grpc as spb_grpc

    with create_channel(target, aio=False, tls=False, token=token) as channel:
        spb_grpc.SplitServiceStub(channel).Ping(spb.PingRequest(), timeout=5)


def test_message_size_limit_applies_to_what_the_client_sends() -> None:
    async def scenario() -> grpc.aio.AioRpcError:
        async with serving(Pinger()) as server:
            target = f"127.0.0.1:{server.port}"
            async with create_channel(target, aio=True, tls=False, max_message_bytes=4096) as ch:
                await ping(ch, payload=1024)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ping(ch, payload=8192)
                return info.value

    err = asyncio.run(scenario())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(("config", "succeeds"), [(True, True), (False, False)])
def test_the_service_config_retries_unavailable(config: bool, succeeds: bool) -> None:
    pinger = Pinger(fail_first=2)
    retries = service_config(max_attempts=4, initial_backoff_s=0.01) if config else None

    async def scenario() -> None:
        async with serving(pinger) as server:
            target = f"127.0.0.1:{server.port}"
            async with create_channel(
                target, aio=True, tls=False, service_config=retries
            ) as channel:
                try:
                    await ping(channel)
                except grpc.aio.AioRpcError as exc:
                    assert not succeeds, exc
                    assert type(error_from_rpc(exc)).__name__ == "TransportError"
                else:
                    assert succeeds

    asyncio.run(scenario())
    assert pinger.calls == (3 if succeeds else 1)
