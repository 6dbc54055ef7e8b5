"""Escalation seen through the OpenAI API: the device endpoint on the real model, a real
gRPC cloud service on 127.0.0.1 (a scripted engine, no cloud model), and the official
``openai`` client reading the ``edgecloud`` extension field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from edgecloud.cloud import CloudServer
from edgecloud.cloud._records import RecordStore
from edgecloud.common.aio import LoopThread
from edgecloud.config import CloudConfig, Settings
from edgecloud.http import Server
from tests.fakes import handing_off_device
from tests.fakes_cloud import ScriptedEngine

pytestmark = pytest.mark.model

CLOUD_SAYS = "the engine answers slowly"
ASK = [{"role": "user", "content": "The three primary colours are"}]


@pytest.fixture(scope="module")
def cloud_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    runner = LoopThread("test-cloud")
    db = tmp_path_factory.mktemp("cloud") / "records.db"
    config = CloudConfig.model_validate({"insecure": True, "port": 0})
    server = runner.run(
        CloudServer.start(ScriptedEngine(CLOUD_SAYS), config, records=RecordStore(db))
    )
    try:
        yield server.port
    finally:
        runner.run(server.stop(0))
        runner.close()


@pytest.fixture(scope="module")
def server(
    cloud_port: int, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log_dir = str(tmp_path_factory.mktemp("device"))
    device = {**handing_off_device(cloud_port, log_dir, first_token_timeout_s=20),
              "http": {"port": 0}}  # fmt: skip
    with Server(Settings.load(cache_dir=model_cache, device=device)) as s:
        yield s


@pytest.fixture
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def test_a_mid_answer_handoff_is_visible_in_the_stream(server: Server, oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model=server.state.model_name, messages=ASK,  # type: ignore[arg-type]
                                         max_tokens=12, stream=True)  # fmt: skip
    chunks = list(stream)
    tokens = [c for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(c.choices[0].delta.content or "" for c in tokens)
    # By default nothing shown is ever taken back: the device's text waited for the
    # cloud's verdict, which rejected it, so every token shown is the cloud's.
    assert text == CLOUD_SAYS
    exts = [(c.model_extra or {})["edgecloud"] for c in tokens]
    assert {e["source"] for e in exts} == {"cloud"} and all(e["retracted"] == 0 for e in exts)
    final = (chunks[-1].model_extra or {})["edgecloud"]
    route = final["route"]
    assert final["source"] == "cloud" and route["escalated"] is True
    assert route["policy"] == "confidence-window" and "mean" in route["reason"]
    assert route["endpoint"] == f"127.0.0.1:{server_cloud_port(server)}"
    assert route["rejected_local_tokens"] == 3 and route["fallback"] is None


def server_cloud_port(server: Server) -> int:
    return int(server.state.settings.device.cloud.endpoints[0].target.rsplit(":", 1)[1])


def test_retractions_are_streamed_to_a_client_that_opts_in(server: Server) -> None:
    body = {"model": server.state.model_name, "messages": ASK, "max_tokens": 12, "stream": True,
            "edgecloud": {"show_unverified": True}}  # fmt: skip
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line.removeprefix("data: ")))
    shown = ""
    sources = []
    for e in events[1:-1]:  # after the role chunk, before the final one
        shown = (
            shown[: len(shown) - e["edgecloud"]["retracted"]] + e["choices"][0]["delta"]["content"]
        )
        sources.append(e["edgecloud"]["source"])
    route = events[-1]["edgecloud"]["route"]
    # the device's 3 tokens were shown as they came, then taken back for the cloud's answer
    assert sources[:3] == ["local"] * 3 and sources[-1] == "cloud"
    assert route["retracted_chars"] == sum(e["edgecloud"]["retracted"] for e in events[1:-1]) > 0
    assert shown == CLOUD_SAYS


def test_a_forced_cloud_route_through_the_extension_field(
    server: Server, oai: openai.OpenAI
) -> None:
    r = oai.completions.create(model=server.state.model_name, prompt="Why is the sky blue?",
                               max_tokens=8, extra_body={"edgecloud": {"route": "cloud"}})  # fmt: skip
    assert r.choices[0].text == CLOUD_SAYS and r.choices[0].finish_reason == "stop"
    ext = (r.model_extra or {})["edgecloud"]
    assert ext["source"] == "cloud"
    assert (ext["route"]["policy"], ext["route"]["escalated"]) == ("forced", True)
    assert r.usage is not None and r.usage.completion_tokens == len(CLOUD_SAYS.split())
