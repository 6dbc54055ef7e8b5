"""Security refusals not covered elsewhere, on the real gRPC service layer over a scripted
engine (no model). What other tests already cover, and where, is listed in
docs/reliability.md: no token and a wrong token (tests/unit/transport/test_server.py), plain
text to a TLS service and an untrusted CA (same), an adapter signed by another key, an offer
replaying another version's manifest and traversal in manifest file names
(tests/integration/test_adapter_manager.py::test_refusals_leave_the_running_version).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud._client import AsyncClient
from edgecloud._proto.v1 import adapters_pb2 as apb
from edgecloud._proto.v1 import adapters_pb2_grpc as apb_grpc
from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud._proto.v1 import inference_pb2_grpc as pb_grpc
from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cloud import CloudServer
from edgecloud.cloud._records import RecordStore
from edgecloud.common.records import EscalationRecord
from edgecloud.config import CloudConfig, Settings
from edgecloud.device._factory import build_engine
from edgecloud.errors import AuthError, ConfigError, InvalidRequestError, TransportError
from edgecloud.http import Server
from edgecloud.transport import CloudClient, hash_token
from edgecloud.transport._status import error_from_rpc
from tests.fakes import ScriptedBackend
from tests.fakes_adapters import TOKENS, publish_fake
from tests.fakes_cloud import ScriptedEngine
from tests.integration._cloudproc import collect
from tests.pki import make_pki

NESTED = "[" * 50_000 + "]" * 50_000


@asynccontextmanager
async def cloud(tmp_path: Path, **config: Any) -> AsyncIterator[CloudServer]:
    registry = AdapterRegistry(tmp_path / "registry")
    publish_fake(registry, Ed25519PrivateKey.generate(), tmp_path / "src")
    registry.rollout("default", 1, 100)
    cfg = CloudConfig.model_validate({"insecure": True, "port": 0, "max_new_tokens": 16,
                                      "default_max_tokens": 8, **config})  # fmt: skip
    server = await CloudServer.start(
        ScriptedEngine("the answer", adapters=["alpha", "beta"]), cfg,
        records=RecordStore(tmp_path / "records.db"), registry=registry,
    )  # fmt: skip
    try:
        yield server
    finally:
        await server.stop(0)


AUTH = {"auth": {"tokens": {d: hash_token(t) for d, t in TOKENS.items()},
                 "adapters": {"robot-1": ["alpha"], "robot-2": ["beta"]}}}  # fmt: skip


def test_a_token_is_its_device_identity_and_a_device_gets_only_its_adapters(
    tmp_path: Path,
) -> None:
    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with cloud(tmp_path, **AUTH) as server:
            target = f"127.0.0.1:{server.port}"
            one = CloudClient(target, tls=False, max_attempts=1, token=TOKENS["robot-1"])
            two = CloudClient(target, tls=False, max_attempts=1, token=TOKENS["robot-2"])
            nobody = CloudClient(target, tls=False, max_attempts=1)
            forged = CloudClient(target, tls=False, max_attempts=1, token="robot-1")
            try:
                out["own"] = (await collect(one, "hi", adapter_id="alpha"))[1]
                for name, client, adapter in (("other's adapter", one, "beta"),
                                              ("no token", nobody, "alpha"),
                                              ("forged token", forged, "alpha")):  # fmt: skip
                    with pytest.raises(AuthError) as info:
                        await collect(client, "hi", adapter_id=adapter)
                    out[name] = str(info.value)
                # robot-2's token uploads a record that claims to come from robot-1:
                # the store files it under robot-2, the token's device
                record = EscalationRecord("p", "", "a", "forced", "r", {}, 1.0,
                                          extra={"device": "robot-1"})  # fmt: skip
                assert await two.upload([record]) == [record.id]
                with pytest.raises(AuthError):
                    await nobody.upload([record])
            finally:
                for c in (one, two, nobody, forged):
                    await c.close()
            out["stored"] = [(r.device, r.record.id) for r in server.records.records()]
            out["id"] = record.id
        return out

    out = asyncio.run(scenario())
    assert out["own"].reason == "stop"
    assert "PERMISSION_DENIED" in out["other's adapter"]
    assert "UNAUTHENTICATED" in out["no token"] and "UNAUTHENTICATED" in out["forged token"]
    assert out["stored"] == [("robot-2", out["id"])]


@pytest.mark.parametrize("target", ["192.0.2.10:50051", "cloud.example.com:443", "[2001:db8::1]:1"])
def test_a_token_is_never_sent_as_plain_text_off_loopback(target: str) -> None:
    """Refused when the client is built, before any connection is attempted."""
    with pytest.raises(ConfigError, match="loopback"):
        CloudClient(target, tls=False, token="secret-token")
    device = {"cloud": {"endpoints": [{"target": target, "tls": False, "token": "secret-token"}]},
              "log": {"enabled": False}}  # fmt: skip

    async def build() -> None:
        build_engine(ScriptedBackend(), Settings.load(device=device))

    with pytest.raises(ConfigError, match="loopback"):  # a device configured so never starts
        asyncio.run(build())


def test_a_certificate_for_another_name_or_from_another_ca_gets_no_token(tmp_path: Path) -> None:
    """The server's certificate names 127.0.0.1 and localhost; a client that expects
    another name, or trusts another CA, fails the handshake and sends nothing."""
    pki = make_pki(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    tls = {"tls": {"cert": str(pki.cert), "key": str(pki.key)}, "insecure": False,
           "host": "127.0.0.1", **AUTH}  # fmt: skip

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with cloud(tmp_path, **tls) as server:
            target = f"127.0.0.1:{server.port}"
            cases = {
                "right": {"root_certificates": pki.ca},
                "another name": {"root_certificates": pki.ca, "server_name": "cloud.example.com"},
                "another CA": {"root_certificates": other.ca},
                "plain text": {"tls": False},
            }
            for name, kw in cases.items():
                c = CloudClient(target, max_attempts=1, token=TOKENS["robot-1"], timeout_s=5, **kw)
                try:
                    out[name] = (await collect(c, "hi"))[1].reason
                except TransportError as exc:
                    out[name] = exc
                finally:
                    await c.close()
            out["served"] = len(server.backend.requests)  # type: ignore[attr-defined]
        return out

    out = asyncio.run(scenario())
    assert out["right"] == "stop" and out["served"] == 1  # only the right one got through
    for name in ("another name", "another CA", "plain text"):
        assert type(out[name]) is TransportError and "UNAVAILABLE" in str(out[name]), name


def test_deeply_nested_json_is_a_clean_refusal(tmp_path: Path) -> None:
    """Found by this suite: nested JSON deeper than Python's recursion limit escaped as
    RecursionError (INTERNAL from the cloud, HTTP 500 from the device endpoint), and so did
    a schema 100 levels deep (jsonschema checks it recursively); a schema deep enough to
    keep a grammar compiler busy for seconds reached it."""

    async def scenario() -> tuple[Exception, Exception, Exception, int]:
        async with cloud(tmp_path) as server:
            c = CloudClient(f"127.0.0.1:{server.port}", tls=False, max_attempts=1)
            record = EscalationRecord("p", "", "a", "forced", "r", {}, 1.0)
            try:
                with pytest.raises(InvalidRequestError) as upload:
                    await _raw(server.port, "UploadEscalations",
                               iter([pb.EscalationRecord(id=record.id, signals_json=NESTED)]))  # fmt: skip
                with pytest.raises(InvalidRequestError) as schema:
                    sampling = pb.SamplingParams(max_tokens=4, json_schema=NESTED[:60_000])
                    async for _ in await _raw(server.port, "Generate",
                                              pb.GenerateRequest(prompt="hi", sampling=sampling)):  # fmt: skip
                        pass
                with pytest.raises(InvalidRequestError) as deep_schema:  # parses, too deep
                    sampling = pb.SamplingParams(max_tokens=4, json_schema=json.dumps(_schema(100)))
                    await _raw(
                        server.port, "Generate", pb.GenerateRequest(prompt="hi", sampling=sampling)
                    )
            finally:
                await c.close()
            return upload.value, schema.value, deep_schema.value, len(server.records)

    upload, schema, deep_schema, stored = asyncio.run(scenario())
    assert "signals_json is not a JSON object" in str(upload) and stored == 0
    assert "nested too deeply" in str(schema)
    assert "json_schema nests 201 levels deep; at most 64" in str(deep_schema)
    with Server(
        Settings.load(device={"http": {"port": 0}}), client=AsyncClient(ScriptedBackend())
    ) as s:
        url = f"http://127.0.0.1:{s.port}/v1/chat/completions"
        body = '{"model": "scripted", "messages": ' + NESTED + "}"
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": _schema(100)}}
        deep = httpx.post(url, json={"model": "scripted", "response_format": fmt,
                                     "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]


def _schema(depth: int) -> dict[str, Any]:
    """An object schema whose properties nest ``depth`` levels deep."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


async def _raw(port: int, method: str, request: Any) -> Any:
    """A call with a message the client would not build (it validates what it sends); a
    stream comes back read to its end; errors as the client raises them."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.InferenceServiceStub(ch)  # type: ignore[no-untyped-call]
        try:
            call = getattr(stub, method)(request, timeout=10)
            return _aiter([x async for x in call]) if hasattr(call, "__aiter__") else await call
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"127.0.0.1:{port}") from exc


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


@pytest.mark.parametrize(
    ("adapter_id", "name"),
    [("default", "../records.db"), ("default", "/etc/passwd"), ("../../registry", "adapter.gguf"),
     ("default", "peft/../../../records.db"), ("default", "manifest.sig"), ("..", "..")],
)  # fmt: skip
def test_path_traversal_in_a_fetch_reads_nothing(
    tmp_path: Path, adapter_id: str, name: str
) -> None:
    async def scenario() -> tuple[grpc.StatusCode, bytes]:
        async with (
            cloud(tmp_path) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
        ):
            stub = apb_grpc.AdapterSyncStub(ch)  # type: ignore[no-untyped-call]
            got = b""
            try:
                async for chunk in stub.FetchAdapter(
                    apb.FetchRequest(adapter_id=adapter_id, version=1, name=name), timeout=10
                ):
                    got += chunk.data
            except grpc.aio.AioRpcError as exc:
                return exc.code(), got
            return grpc.StatusCode.OK, got

    code, got = asyncio.run(scenario())
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) and got == b""


def test_oversized_messages_are_refused_before_they_are_handled(tmp_path: Path) -> None:
    async def scenario() -> tuple[Exception, Exception, int]:
        async with cloud(tmp_path, max_message_bytes=65536) as server:
            c = CloudClient(f"127.0.0.1:{server.port}", tls=False, max_attempts=1,
                            max_message_bytes=1 << 22)  # fmt: skip
            try:
                with pytest.raises(TransportError) as big_prompt:
                    await collect(c, "x" * 200_000)
                record = EscalationRecord("x" * 200_000, "", "a", "forced", "r", {}, 1.0)
                with pytest.raises(TransportError) as big_record:
                    await c.upload([record])
                served = len(server.backend.requests)  # type: ignore[attr-defined]
                assert (await collect(c, "hi"))[1].reason == "stop"  # and it still serves
            finally:
                await c.close()
            return big_prompt.value, big_record.value, served + len(server.records)

    big_prompt, big_record, handled = asyncio.run(scenario())
    for err in (big_prompt, big_record):
        assert "RESOURCE_EXHAUSTED" in str(err) or "larger than" in str(err), err
    assert handled == 0
