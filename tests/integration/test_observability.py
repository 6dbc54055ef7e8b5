"""Metrics and request ids across a real gRPC cloud (127.0.0.1, a scripted engine: no model)
and a device engine (a scripted backend): the counters both sides expose move by what was
asked of them, and one escalated request can be followed through both sides' JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud._proto.v1 import inference_pb2_grpc as pb_grpc
from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cloud import CloudServer
from edgecloud.cloud._records import RecordStore
from edgecloud.common.logs import JsonFormatter, bind_request_id
from edgecloud.config import CloudConfig, DeviceCloudConfig, RouterConfig
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import CancelScope, HybridEngine
from edgecloud.errors import ConfigError, InvalidRequestError
from edgecloud.transport import CloudClient
from edgecloud.types import Chunk, Finish, SamplingParams
from tests import scrape
from tests.fakes import ScriptedBackend
from tests.fakes_cloud import ScriptedEngine

# ScriptedBackend's token i has logprob -0.5 * (i + 1): TRIP hands off after 3 tokens.
TRIP = RouterConfig(window=2, min_mean_logprob=-1.2, min_tokens=2)
CALM = RouterConfig(window=2, min_mean_logprob=-50.0, min_tokens=2)
CLOUD_SAYS = "the engine answers slowly"
PARAMS = SamplingParams(max_tokens=8)


@asynccontextmanager
async def cloud(tmp_path: Path, engine: ScriptedEngine) -> AsyncIterator[CloudServer]:
    config = CloudConfig.model_validate(
        {
            "insecure": True,
            "port": 0,
            "max_new_tokens": 16,
            "default_max_tokens": 8,
            "metrics": {"enabled": True, "port": 0},
        }
    )
    server = await CloudServer.start(
        engine, config, records=RecordStore(tmp_path / "records.db"),
        registry=AdapterRegistry(tmp_path / "registry"),
    )  # fmt: skip
    try:
        yield server
    finally:
        await server.stop(0)


def device(server: CloudServer, tmp_path: Path, router: RouterConfig, name: str) -> HybridEngine:
    client = CloudClient(f"127.0.0.1:{server.port}", tls=False, max_attempts=1)
    return HybridEngine(
        ScriptedBackend("one two three four five six seven eight"),
        pool=EndpointPool([Endpoint(client, CircuitBreaker())]), router=router,
        cloud=DeviceCloudConfig(), log=EscalationLog(tmp_path / f"{name}.db"),
    )  # fmt: skip


async def ask(engine: HybridEngine, **kw: Any) -> tuple[list[Chunk], Finish]:
    chunks, finish = [], None
    async for ev in engine.stream("Q: count\nA:", PARAMS, cancel=CancelScope(), **kw):
        if isinstance(ev, Chunk):
            chunks.append(ev)
        else:
            finish = ev
    assert finish is not None
    return chunks, finish


async def cloud_scrape(server: CloudServer) -> scrape.Snapshot:
    assert server.metrics is not None
    return await asyncio.to_thread(scrape.http, server.metrics.url)


def test_both_sides_count_local_escalated_and_handed_off_requests(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        r: dict[str, Any] = {}
        async with cloud(tmp_path, ScriptedEngine(CLOUD_SAYS)) as server:
            calm, trip = device(server, tmp_path, CALM, "calm"), device(server, tmp_path, TRIP, "t")
            other = CloudClient(f"127.0.0.1:{server.port}", tls=False, max_attempts=1)
            try:
                r["before_d"], r["before_c"] = scrape.device(), await cloud_scrape(server)
                r["local"], _ = await ask(calm, route="local")
                r["forced"], _ = await ask(calm, route="cloud")
                r["handed"], r["handoff"] = await ask(trip)
                r["mid_d"], r["mid_c"] = scrape.device(), await cloud_scrape(server)
                # A request the service refuses: counted as an error by its gRPC status.
                with pytest.raises(InvalidRequestError):
                    async for _ in other.stream("hi", max_tokens=99):
                        pass
                r["uploaded"] = await calm.upload_pending() + await trip.upload_pending()
                r["after_d"], r["after_c"] = scrape.device(), await cloud_scrape(server)
            finally:
                await other.close()
                await calm.aclose()
                await trip.aclose()
        r["port"] = server.metrics
        return r

    r = asyncio.run(scenario())
    local, forced, handed, handoff = r["local"], r["forced"], r["handed"], r["handoff"]
    before_d, mid_d, after_d = r["before_d"], r["mid_d"], r["after_d"]
    before_c, mid_c, after_c = r["before_c"], r["mid_c"], r["after_c"]
    assert r["port"] is None  # the metrics port stops with the server

    # The device: one request per route, its tokens by source, the escalations by policy.
    assert {c.source for c in local} == {"local"} and {c.source for c in forced} == {"cloud"}
    assert handoff.route.policy == "confidence-window" and handoff.route.escalated
    handed_local = sum(c.source == "local" for c in handed)
    handed_cloud = sum(c.source == "cloud" for c in handed)
    assert handed_cloud > 0
    handoff_route = "mixed" if handed_local else "cloud"
    d = lambda name, **labels: mid_d.delta(before_d, name, **labels)  # noqa: E731
    assert d("edgecloud_requests_total", side="device", route="local", finish="stop") == 1
    assert d("edgecloud_requests_total", side="device", route="cloud", finish="stop") == (
        1 + (handoff_route == "cloud")
    )
    assert d("edgecloud_requests_total", side="device", route="mixed", finish="stop") == (
        handoff_route == "mixed"
    )
    assert d("edgecloud_tokens_total", side="device", source="local") == len(local) + handed_local
    assert d("edgecloud_tokens_total", side="device", source="cloud") == len(forced) + handed_cloud
    assert d("edgecloud_device_escalations_total", policy="forced") == 1
    assert d("edgecloud_device_escalations_total", policy="confidence-window") == 1
    assert d("edgecloud_device_handoffs_total") == 1
    assert d("edgecloud_device_fallbacks_total") == 0
    assert d("edgecloud_time_to_first_token_seconds_count", side="device") == 3
    tokens = len(local) + len(forced) + len(handed)
    assert d("edgecloud_inter_token_seconds_count", side="device") == tokens - 3
    assert mid_d["edgecloud_device_upload_backlog", {}] == 1  # the hand-off's record, so far

    # The cloud (scraped over HTTP): the two calls it served, and their tokens.
    c = lambda name, **labels: mid_c.delta(before_c, name, **labels)  # noqa: E731
    assert c("edgecloud_requests_total", side="cloud", route="answer", finish="stop") == 1
    assert c("edgecloud_requests_total", side="cloud", route="verify", finish="stop") == 1
    assert c("edgecloud_tokens_total", side="cloud", source="cloud") == 4 + handed_cloud
    assert c("edgecloud_time_to_first_token_seconds_count", side="cloud") == 2
    assert c("edgecloud_inter_token_seconds_count", side="cloud") == 4 + handed_cloud - 2

    # Then the refused call, and the upload: both sides agree on what was stored.
    assert r["uploaded"] == 2
    assert after_c.delta(mid_c, "edgecloud_cloud_errors_total", rpc="Generate",
                         code="INVALID_ARGUMENT") == 1  # fmt: skip
    assert after_c.delta(mid_c, "edgecloud_requests_total", side="cloud", route="answer",
                         finish="error") == 1  # fmt: skip
    assert after_c.delta(mid_c, "edgecloud_cloud_records_stored_total") == 2
    assert after_d.delta(mid_d, "edgecloud_device_records_uploaded_total") == 2
    assert after_d["edgecloud_device_upload_backlog", {}] == 0


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The JSON log lines of every edgecloud logger at INFO, as the CLI writes them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("edgecloud")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_one_escalated_request_is_followed_across_both_logs(
    tmp_path: Path, json_lines: io.StringIO
) -> None:
    engine_ = ScriptedEngine(CLOUD_SAYS)

    async def scenario() -> None:
        async with cloud(tmp_path, engine_) as server:
            trip = device(server, tmp_path, TRIP, "trip")
            try:
                await ask(trip)
                with bind_request_id("upload-7"):
                    assert await trip.upload_pending() == 1
            finally:
                await trip.aclose()

    asyncio.run(scenario())
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    [record] = RecordStore(tmp_path / "records.db").records()
    rid = record.record.extra["request_id"]  # the record names the request it came from
    assert len(rid) == 32
    mine = [line for line in lines if line.get("request_id") == rid]
    loggers = {line["logger"] for line in mine}
    assert {"edgecloud.device.requests", "edgecloud.cloud"} <= loggers, lines
    [cloud_end] = [line for line in mine if line["message"].startswith("Generate")]
    assert (cloud_end["route"], cloud_end["finish"]) == ("verify", "stop")
    [device_end] = [line for line in mine if line["logger"] == "edgecloud.device.requests"]
    assert device_end["policy"] == "confidence-window" and device_end["escalated"] is True
    assert [req.request_id for req in engine_.requests] == [rid]  # in the message as well
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= line.keys()
    # The upload carried the caller's id to the cloud's log line.
    stored = [line for line in lines if line["message"].startswith("stored")]
    assert [line.get("request_id") for line in stored] == ["upload-7"]


def test_the_cloud_binds_the_metadata_id_and_keeps_the_message_one(
    tmp_path: Path, json_lines: io.StringIO
) -> None:
    engine_ = ScriptedEngine(CLOUD_SAYS)

    async def scenario() -> None:
        async with (
            cloud(tmp_path, engine_) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            stub = pb_grpc.InferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            msg = pb.GenerateRequest(prompt="hi", request_id="in-message")
            call = stub.Generate(msg, metadata=(("x-request-id", "in metadata " + "x" * 200),))
            assert len([r async for r in call]) == 5
            call = stub.Generate(pb.GenerateRequest(prompt="hi", request_id="only-message"))
            assert len([r async for r in call]) == 5

    asyncio.run(scenario())
    ends = [json.loads(x) for x in json_lines.getvalue().splitlines() if '"Generate' in x]
    assert [e["request_id"] for e in ends] == ["inmetadata" + "x" * 118, "only-message"]
    assert [r.request_id for r in engine_.requests] == ["in-message", "only-message"]


def test_a_busy_metrics_port_fails_the_start_and_leaves_nothing_running(tmp_path: Path) -> None:
    async def scenario() -> int:
        async with cloud(tmp_path, ScriptedEngine(CLOUD_SAYS)) as first:
            assert first.metrics is not None
            busy = {"insecure": True, "port": 0, "metrics": {"enabled": True,
                                                             "port": first.metrics.port}}  # fmt: skip
            with pytest.raises(ConfigError, match=r"cloud\.metrics: cannot listen"):
                await CloudServer.start(
                    ScriptedEngine(CLOUD_SAYS), CloudConfig.model_validate(busy),
                    records=RecordStore(tmp_path / "second.db"),
                    registry=AdapterRegistry(tmp_path / "registry"),
                )  # fmt: skip
            return first.metrics.port

    port = asyncio.run(scenario())
    with pytest.raises(OSError):
        scrape.http(f"http://127.0.0.1:{port}/metrics")
    threads = [t.name for t in threading.enumerate()]
    assert not [t for t in threads if "serve_forever" in t or "prometheus" in t.lower()], threads
