"""LAN discovery end to end: real zeroconf on 127.0.0.1 only, real gRPC cloud services on
127.0.0.1 with a scripted engine (no model), and the device's real engine wiring
(AsyncClient -> build_engine -> maintain -> DiscoveredEndpoints).

Each test announces under its own service type, so services of other tests (or other
processes on this host) never mix in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgecloud import AsyncClient
from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cloud import CloudServer, RecordStore
from edgecloud.config import CloudConfig, Settings
from edgecloud.discovery import Advertiser, Browser, CloudAdvert, Found, fingerprint
from edgecloud.errors import DiscoveryError
from tests.fakes import ScriptedBackend
from tests.fakes_cloud import ScriptedEngine
from tests.pki import make_pki

T = TypeVar("T")
LO = ["127.0.0.1"]


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def service_type() -> str:
    return f"_ec{uuid.uuid4().hex[:10]}._tcp.local."


@asynccontextmanager
async def cloud(
    where: Path, stype: str, name: str, answer: str, *, tls: tuple[Path, Path] | None = None
) -> AsyncIterator[CloudServer]:
    """A cloud service with a scripted engine on 127.0.0.1, announced on loopback."""
    cfg: dict[str, Any] = {
        "port": 0,
        "discovery": {"advertise": True, "interfaces": LO, "name": name,
                      "service_type": stype, "refresh_s": 0.5},
    }  # fmt: skip
    if tls is None:
        cfg["insecure"] = True
    else:
        cfg["tls"] = {"cert": str(tls[0]), "key": str(tls[1])}
    where.mkdir(parents=True, exist_ok=True)
    server = await CloudServer.start(
        ScriptedEngine(answer), CloudConfig.model_validate(cfg),
        records=RecordStore(where / "records.db"),
        registry=AdapterRegistry(str(where / "registry")),
    )  # fmt: skip
    try:
        yield server
    finally:
        await stop(server)


_STOPPED: weakref.WeakSet[CloudServer] = weakref.WeakSet()


async def stop(server: CloudServer) -> None:
    """Stop a cloud service once (a test may stop one before its block ends)."""
    if server not in _STOPPED:
        _STOPPED.add(server)
        await server.stop(0)


def device(tmp_path: Path, stype: str, **discovery: Any) -> AsyncClient:
    settings = Settings.load(
        cache_dir=tmp_path / "cache",
        device={
            "log": {"enabled": False},
            "cloud": {"health_interval_s": 0.5, "first_token_timeout_s": 5},
            "discovery": {"enabled": True, "interfaces": LO, "service_type": stype,
                          "refresh_s": 0.5, "resolve_timeout_s": 2, **discovery},
        },
    )  # fmt: skip
    return AsyncClient(ScriptedBackend("local words here"), settings=settings)


async def targets(client: AsyncClient, count: int, timeout_s: float = 15.0) -> list[str]:
    """Start the client's engine and wait until ``count`` discovered endpoints are in."""
    engine = client._hybrid()
    assert engine is not None and engine.pool is not None
    pool = engine.pool
    async with asyncio.timeout(timeout_s):
        while len(pool.endpoints) != count:
            await asyncio.sleep(0.05)
    return [e.target for e in pool.endpoints]


def test_cloud_announces_what_it_serves_and_withdraws_at_stop(tmp_path: Path) -> None:
    stype = service_type()

    async def scenario() -> tuple[Any, Any, dict[str, Any]]:
        async with Browser(stype, interfaces=LO) as browser:
            async with cloud(tmp_path / "a", stype, "alpha", "a b") as server:
                event = await asyncio.wait_for(browser.get(), 15)
                announced = server.announcement
                assert announced is not None
                server.backend.running = 3  # type: ignore[attr-defined]
                # the refresh announces the new load (3 running of 4 slots)
                while True:
                    later = await asyncio.wait_for(browser.get(), 15)
                    if isinstance(later, Found) and later.service.advert.load == 0.75:
                        break
            gone = await asyncio.wait_for(browser.get(), 15)
            return event, gone, {"port": server.port}

    found, gone, info = run(scenario)
    assert isinstance(found, Found)
    s = found.service
    assert s.instance == "alpha" and s.port == info["port"] and "127.0.0.1" in s.addresses
    advert = s.advert
    assert isinstance(advert, CloudAdvert)
    assert advert.kinds == ("inference", "adapters") and advert.models == ("scripted-cloud",)
    assert advert.tls is False and advert.fingerprint is None and advert.load == 0.0
    assert gone.name == s.name  # withdrawn at stop


def test_device_discovers_a_cloud_and_escalates_to_it(tmp_path: Path) -> None:
    stype = service_type()

    async def scenario() -> tuple[list[str], Any, int]:
        async with (
            cloud(tmp_path / "a", stype, "alpha", "cloud alpha answers") as server,
            device(tmp_path, stype) as client,
        ):
            found = await targets(client, 1)
            r = await client.generate("hi", route="cloud", max_tokens=8)
            return found, r, server.port

    found, r, port = run(scenario)
    assert found == [f"127.0.0.1:{port}"]
    assert r.text == "cloud alpha answers" and r.source == "cloud"
    assert r.route is not None and r.route.endpoint == f"127.0.0.1:{port}"


def test_when_the_cloud_in_use_disappears_the_device_moves_to_the_next(tmp_path: Path) -> None:
    stype = service_type()

    async def scenario() -> tuple[str, str, list[str], int]:
        async with (
            device(tmp_path, stype) as client,
            cloud(tmp_path / "a", stype, "alpha", "alpha speaks") as a,
            cloud(tmp_path / "b", stype, "beta", "beta speaks") as b,
        ):
            await targets(client, 2)
            first = (await client.generate("hi", route="cloud", max_tokens=8)).text
            gone = a if first == "alpha speaks" else b
            await stop(gone)  # withdraws its announcement, then stops serving
            left = await targets(client, 1)
            second = (await client.generate("hi", route="cloud", max_tokens=8)).text
            return first, second, left, (b if gone is a else a).port

    first, second, left, port = run(scenario)
    assert {first, second} == {"alpha speaks", "beta speaks"}
    assert left == [f"127.0.0.1:{port}"]


def test_a_service_that_refuses_connections_is_dropped_and_the_next_one_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stype = service_type()
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]

    async def scenario() -> tuple[list[str], str, int]:
        dead = Advertiser(stype, "dead", dead_port, txt=CloudAdvert(tls=False).to_txt(),
                          addresses=LO, interfaces=LO)  # fmt: skip
        async with (
            dead,
            cloud(tmp_path / "a", stype, "alpha", "alpha lives") as server,
            device(tmp_path, stype) as client,
        ):
            found = await targets(client, 1)
            await asyncio.sleep(1.2)  # refresh_s 0.5: the dead one was retried, in vain
            again = await targets(client, 1)
            assert again == found
            r = await client.generate("hi", route="cloud", max_tokens=8)
            return found, r.text, server.port

    with caplog.at_level(logging.INFO, "edgecloud.device.discovery"):
        found, text, port = run(scenario)
    assert found == [f"127.0.0.1:{port}"] and text == "alpha lives"
    assert any("unreachable" in r.getMessage() and str(dead_port) in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_garbage_and_oversized_txt_records_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stype = service_type()
    bad = [
        {"v": "1", "kinds": "inference", "tls": "0", "load": "nan"},
        {"v": "2", "kinds": "inference", "tls": "0"},
        {"v": "1", "kinds": "inference", "tls": "1"},  # TLS without a fingerprint
        {"v": "1", "kinds": "inference", "tls": "0", "models": "m" * 240},
        {f"k{i}": "x" * 200 for i in range(7)},  # 1.4 kB: a flood, not a record
    ]

    async def scenario() -> tuple[list[str], str, int]:
        adverts = [Advertiser(stype, f"bad{i}", 1000 + i, txt=txt, addresses=LO, interfaces=LO)
                   for i, txt in enumerate(bad)]  # fmt: skip
        for a in adverts:
            await a.start()
        try:
            async with (
                cloud(tmp_path / "a", stype, "alpha", "alpha is sane") as server,
                device(tmp_path, stype) as client,
            ):
                found = await targets(client, 1)
                await asyncio.sleep(0.5)
                assert len(await targets(client, 1)) == 1
                r = await client.generate("hi", route="cloud", max_tokens=8)
                return found, r.text, server.port
        finally:
            for a in adverts:
                await a.stop()

    with caplog.at_level(logging.INFO, "edgecloud.discovery"):
        found, text, port = run(scenario)
    assert found == [f"127.0.0.1:{port}"] and text == "alpha is sane"
    skipped = " ".join(r.getMessage() for r in caplog.records if "skipping" in r.getMessage())
    for i in range(4):  # the flood (bad4) may not even arrive whole; it is never used
        assert f"bad{i}." in skipped, skipped


def test_two_services_with_one_name_get_distinct_names_or_a_clear_error() -> None:
    stype = service_type()

    async def scenario() -> tuple[str, str, str, list[str]]:
        kw: dict[str, Any] = {"txt": CloudAdvert(tls=False).to_txt(), "addresses": LO,
                              "interfaces": LO}  # fmt: skip
        async with (
            Browser(stype, interfaces=LO) as browser,
            Advertiser(stype, "twin", 1001, **kw) as one,
            Advertiser(stype, "twin", 1002, **kw) as two,
        ):
            strict = Advertiser(stype, "twin", 1003, rename=False, **kw)
            with pytest.raises(DiscoveryError) as err:
                await strict.start()
            async with asyncio.timeout(15):
                while len(browser.services) < 2:
                    await asyncio.sleep(0.05)
            ports = sorted(str(s.port) for s in browser.services.values())
            return one.name, two.name, str(err.value), ports

    one, two, error, ports = run(scenario)
    assert one == "twin" and two == "twin-2"
    assert "'twin' is already announced" in error
    assert ports == ["1001", "1002"]


class RecordingTlsServer:
    """A TLS listener that records any application bytes a client sends after the
    handshake (a token would be among them)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.set_alpn_protocols(["h2"])
        self.received = b""
        self.handshakes = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
            self.received += await asyncio.wait_for(reader.read(4096), 2)
        writer.close()


def _der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


def test_tls_cloud_is_used_when_its_certificate_matches_and_chains_to_the_ca(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    stype = service_type()

    async def scenario() -> tuple[list[str], Any, int, Any]:
        async with cloud(tmp_path / "a", stype, "alpha", "tls alpha", tls=(pki.cert, pki.key)) as s:
            assert s.announcement is not None
            async with device(tmp_path, stype, root_certificates=str(pki.ca),
                              token="device-token-123") as client:  # fmt: skip
                found = await targets(client, 1)
                r = await client.generate("hi", route="cloud", max_tokens=8)
                return found, r, s.port, s.announcement.advertiser._txt

    found, r, port, txt = run(scenario)
    assert txt["tls"] == "1" and txt["fp"] == fingerprint(_der(pki.cert))
    assert found == [f"127.0.0.1:{port}"] and r.text == "tls alpha"


def test_a_service_presenting_another_certificate_than_advertised_never_gets_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    stype = service_type()
    rogue = RecordingTlsServer(pki.cert, pki.key)  # a CA-signed certificate, even
    untrusted = RecordingTlsServer(other.cert, other.key)  # honest fp, unknown CA

    async def scenario() -> tuple[list[str], str, int]:
        srv = await asyncio.start_server(rogue.handle, "127.0.0.1", 0, ssl=rogue.ctx)
        srv2 = await asyncio.start_server(untrusted.handle, "127.0.0.1", 0, ssl=untrusted.ctx)
        rogue_port = srv.sockets[0].getsockname()[1]
        untrusted_port = srv2.sockets[0].getsockname()[1]
        lies = CloudAdvert(tls=True, fingerprint=fingerprint(_der(other.cert)))
        honest = CloudAdvert(tls=True, fingerprint=fingerprint(_der(other.cert)))
        async with (
            srv, srv2,
            Advertiser(stype, "rogue", rogue_port, txt=lies.to_txt(), addresses=LO,
                       interfaces=LO),
            Advertiser(stype, "stranger", untrusted_port, txt=honest.to_txt(), addresses=LO,
                       interfaces=LO),
            cloud(tmp_path / "a", stype, "alpha", "the real one", tls=(pki.cert, pki.key)) as s,
            device(tmp_path, stype, root_certificates=str(pki.ca),
                   token="device-token-123") as client,
        ):  # fmt: skip
            found = await targets(client, 1)
            await asyncio.sleep(1.0)  # refreshes pass; the rejected stay out
            assert await targets(client, 1) == found
            r = await client.generate("hi", route="cloud", max_tokens=8)
            return found, r.text, s.port

    with caplog.at_level(logging.INFO, "edgecloud.device.discovery"):
        found, text, port = run(scenario)
    assert found == [f"127.0.0.1:{port}"] and text == "the real one"
    assert rogue.handshakes >= 1 and untrusted.handshakes >= 1  # they were checked...
    assert rogue.received == b"" and untrusted.received == b""  # ...and sent nothing
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert any("rogue" in m and "but advertised" in m for m in rejected), rejected
    assert any("stranger" in m and "not signed by" in m for m in rejected), rejected


def test_a_device_announces_its_http_endpoint_until_the_block_ends(tmp_path: Path) -> None:
    from edgecloud.discovery import DEVICE_SERVICE_TYPE, DeviceAdvert, Lost, advertise_device

    pki = make_pki(tmp_path)
    name = f"dev-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[Any, Any]:
        async with Browser(DEVICE_SERVICE_TYPE, interfaces=LO) as browser:
            async with advertise_device(8089, host="127.0.0.1", model="gemma3-270m",
                                        certificate=pki.cert, name=name):  # fmt: skip
                async with asyncio.timeout(15):
                    while True:  # other devices on this host may announce too
                        event = await browser.get()
                        if isinstance(event, Found) and event.service.instance == name:
                            break
            async with asyncio.timeout(15):
                while True:
                    gone = await browser.get()
                    if isinstance(gone, Lost) and gone.name == event.service.name:
                        return event.service, gone

    service, gone = run(scenario)
    assert isinstance(service.advert, DeviceAdvert) and gone.name == service.name
    assert service.port == 8089 and service.addresses == ("127.0.0.1",)
    assert service.advert == DeviceAdvert("/v1", "gemma3-270m", True, fingerprint(_der(pki.cert)))


def test_the_discover_command_lists_what_is_announced() -> None:
    from typer.testing import CliRunner

    from edgecloud.cli.app import app
    from edgecloud.common.aio import LoopThread

    stype = service_type()
    advert = CloudAdvert(("inference",), ("scripted",), (("default", 2),), False, None, 0.5)
    runner, loop = CliRunner(), LoopThread()
    ad = Advertiser(stype, "listed", 50999, txt=advert.to_txt(), addresses=LO, interfaces=LO)
    loop.run(ad.start(), timeout=15)
    try:
        env = {"EDGECLOUD_DEVICE__DISCOVERY__SERVICE_TYPE": stype}
        args = ["discover", "--interface", "127.0.0.1", "--timeout", "2"]
        as_json = runner.invoke(app, [*args, "--json"], env=env)
        table = runner.invoke(app, args, env=env)
    finally:
        loop.run(ad.stop(), timeout=15)
        loop.close()
    assert as_json.exit_code == 0, as_json.output
    out = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert out["type"] == "discover" and out["service_type"] == stype
    [row] = out["services"]
    assert row["name"] == "listed" and row["port"] == 50999 and row["addresses"] == LO
    assert row["adapters"] == [{"id": "default", "version": 2}] and row["load"] == 0.5
    assert table.exit_code == 0 and "listed" in table.stdout and "1 found" in table.stdout


def _self_signed(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (what pinning is for), as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinned-cloud")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = where / "pinned.pem", where / "pinned-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def test_a_pinned_self_signed_cloud_is_used_without_a_ca(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    fp = fingerprint(_der(cert))
    stype = service_type()

    async def scenario() -> tuple[list[str], str, int]:
        async with (
            cloud(tmp_path / "a", stype, "alpha", "pinned alpha", tls=(cert, key)) as s,
            device(tmp_path, stype, pinned_fingerprints=[fp], token="device-token-123") as c,
        ):
            found = await targets(c, 1)
            r = await c.generate("hi", route="cloud", max_tokens=8)
            return found, r.text, s.port

    found, text, port = run(scenario)
    assert found == [f"127.0.0.1:{port}"] and text == "pinned alpha"


def test_device_serve_announces_its_endpoint_while_it_listens() -> None:
    """``device.http.advertise``: the OpenAI endpoint is announced with the port it bound
    (port 0 here) and withdrawn when the server stops."""
    from edgecloud.discovery import DEVICE_SERVICE_TYPE, DeviceAdvert, browse
    from edgecloud.http import Server

    http = {"port": 0, "advertise": True, "advertise_interfaces": LO, "model_name": "robot-7"}
    settings = Settings.load(device={"http": http})
    client = AsyncClient(ScriptedBackend("local words here"))

    def ours(found: list[Any], port: int) -> list[Any]:
        return [s for s in found if s.port == port and s.addresses == ("127.0.0.1",)]

    with Server(settings, client=client) as server:
        found = ours(run(lambda: browse(DEVICE_SERVICE_TYPE, interfaces=LO, timeout_s=4)),
                     server.port)  # fmt: skip
        assert len(found) == 1
        advert = found[0].advert
        assert isinstance(advert, DeviceAdvert) and advert.path == "/v1"
        assert advert.model == "robot-7" and advert.tls is False
    after = run(lambda: browse(DEVICE_SERVICE_TYPE, interfaces=LO, timeout_s=2))
    assert ours(after, server.port) == []
