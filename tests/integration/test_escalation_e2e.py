"""Escalation end to end: the device client, a real cloud service process with the fleet
manual as its knowledge base, and a proxy that shows what crossed the wire."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecloud import Client
from tests.integration._cloudproc import Proxy, start_cloud, stop

pytestmark = pytest.mark.model

MANUAL = Path(__file__).parents[2] / "bench" / "data" / "fleet_manual"
FEW_SHOT = "Q: What is the capital of France?\nA: Paris\nQ: {q}\nA:"


@pytest.fixture(scope="module")
def cloud(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    records = tmp_path_factory.mktemp("records") / "records.db"
    # float32: the hand-off test compares a continued answer with the all-cloud one token
    # for token, which bfloat16 ("auto" on CPUs with native bf16) does not guarantee.
    env = {"EDGECLOUD_CLOUD__RECORDS__PATH": str(records),
           "EDGECLOUD_CLOUD__KNOWLEDGE__INDEX_DIR": str(records.parent / "idx"),
           "EDGECLOUD_CLOUD__MODEL__DTYPE": "float32"}  # fmt: skip
    proc, port = start_cloud(model_cache, "--knowledge", str(MANUAL), env=env)
    try:
        yield {"port": port, "proc": proc, "records": records}
    finally:
        stop(proc)


def device_toml(tmp_path: Path, cache: Path, ports: list[int], **router: Any) -> Path:
    router_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in router.items())
    endpoints = "".join(
        f'[[device.cloud.endpoints]]\ntarget = "127.0.0.1:{p}"\ntls = false\n' for p in ports
    )
    cfg = tmp_path / "device.toml"
    cfg.write_text(
        f'cache_dir = "{cache}"\n'
        "[device.model]\nn_threads = 2\nn_ctx = 1024\n"
        f"[device.router]\n{router_lines}"
        "[device.cloud]\nfirst_token_timeout_s = 20\ntimeout_s = 120\nhealth_interval_s = 60\n"
        f'[device.log]\npath = "{tmp_path / "log.db"}"\n'
        f"{endpoints}"
    )
    return cfg


def test_forced_cloud_answer_is_grounded_on_the_knowledge_base(
    cloud: dict[str, Any], model_cache: Path, tmp_path: Path
) -> None:
    heron = (MANUAL / "heron.md").read_text()
    payload = heron.split("payload of the Heron robot is ")[1].split(" kg")[0]
    with Client.from_config(device_toml(tmp_path, model_cache, [cloud["port"]])) as client:
        q = FEW_SHOT.format(q="What is the maximum payload of the Heron robot?")
        r = client.generate(q, route="cloud", max_tokens=12, stop=["\n"])
        assert r.source == "cloud" and r.route is not None and r.route.policy == "forced"
        assert any("Heron" in p.text for p in r.route.passages)
        assert payload.split(".")[0] in r.text
        local = client.generate(q, route="local", max_tokens=12, stop=["\n"])
        assert local.source == "local" and payload not in local.text


def test_mid_answer_handoff_is_verified_by_the_cloud_logged_then_uploaded(
    cloud: dict[str, Any], model_cache: Path, tmp_path: Path
) -> None:
    # A threshold every answer trips after 3 tokens: the cloud checks the device's text
    # under its own model, keeps what it agrees with, and continues from there.
    cfg = device_toml(
        tmp_path, model_cache, [cloud["port"]], min_mean_logprob=-0.0001, min_tokens=3, window=3
    )
    prompt = "The three primary colours are"
    with Client.from_config(cfg) as client:
        stream = client.stream(prompt, max_tokens=16)
        chunks = list(stream)
        r = stream.result
        assert r.route is not None and r.route.policy == "confidence-window"
        assert [c.source for c in chunks[:3]] == ["local"] * 3  # shown before the hand-off
        assert r.route.local_tokens_before_handoff + r.route.rejected_local_tokens == 3
        assert r.usage.completion_tokens == len([c for c in chunks if c.token_id >= 0]) - (
            r.route.rejected_local_tokens
        )
        # what the app shows, with the retractions applied, is the corrected answer
        shown = ""
        for c in chunks:
            shown = shown[: len(shown) - c.retracted] + c.text
        assert shown == r.text
        assert r.route.retracted_chars == sum(c.retracted for c in chunks)
        # the corrected answer is the cloud's own greedy answer (the cloud had 13 tokens
        # left, so it may be cut shorter than the all-cloud one)
        local_text = "".join(c.text for c in chunks[:3])
        whole = client.generate(prompt, route="cloud", max_tokens=16)
        assert whole.text.startswith(r.text) and len(r.text) > len(local_text) // 2
        assert client.upload_pending() >= 1
        assert client.upload_pending() == 0
    with sqlite3.connect(cloud["records"]) as db:
        rows = db.execute("SELECT prompt, local_partial, extra FROM escalations").fetchall()
    mine = [json.loads(extra) for p, partial, extra in rows if (p, partial) == (prompt, local_text)]
    assert mine, rows
    assert mine[0]["kept_prefix_chars"] == len(local_text) - r.route.retracted_chars
    assert mine[0]["rejected_prefix"] == local_text[mine[0]["kept_prefix_chars"] :]


def test_private_request_never_crosses_the_wire(
    cloud: dict[str, Any], model_cache: Path, tmp_path: Path
) -> None:
    proxy = Proxy(cloud["port"])
    try:
        cfg = device_toml(
            tmp_path, model_cache, [proxy.port], min_mean_logprob=-0.0001, min_tokens=1, window=1
        )
        with Client.from_config(cfg) as client:
            public = client.generate("Write a haiku about rain.", max_tokens=6)
            assert public.route is not None and public.route.escalated
            secret = client.generate(
                "My email is jane.doe@example.org, write a haiku about it.", max_tokens=6
            )
            assert secret.source == "local" and secret.route is not None and secret.route.private
            client.upload_pending()
        assert b"haiku about rain" in proxy.sent  # the proxy does see ordinary traffic
        assert b"jane.doe" not in proxy.sent
    finally:
        proxy.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_cloud_at_start_is_answered_locally(model_cache: Path, tmp_path: Path) -> None:
    cfg = device_toml(tmp_path, model_cache, [_free_port()], min_mean_logprob=-0.0001, min_tokens=2)
    with Client.from_config(cfg) as client:
        r = client.generate("The sky is", max_tokens=6)
        assert r.source == "local" and r.usage.completion_tokens == 6
        assert r.route is not None and (r.route.fallback or r.route.policy == "connectivity")


def test_cloud_slower_than_its_deadline_falls_back(
    cloud: dict[str, Any], model_cache: Path, tmp_path: Path
) -> None:
    proxy = Proxy(cloud["port"], delay_s=1.5)
    try:
        cfg = device_toml(
            tmp_path, model_cache, [proxy.port], min_mean_logprob=-0.0001, min_tokens=2
        )
        cfg.write_text(
            cfg.read_text().replace("first_token_timeout_s = 20", "first_token_timeout_s = 0.5")
        )
        with Client.from_config(cfg) as client:
            r = client.generate("The sky is", max_tokens=6)
        assert r.route is not None and r.route.fallback is not None and "0.5" in r.route.fallback
        assert r.source == "local" and r.usage.completion_tokens == 6
    finally:
        proxy.close()


def test_cloud_killed_mid_stream_is_finished_on_the_device(
    model_cache: Path, tmp_path: Path
) -> None:
    proc, port = start_cloud(model_cache)
    try:
        cfg = device_toml(
            tmp_path, model_cache, [port], min_mean_logprob=-0.0001, min_tokens=2, window=2
        )
        with Client.from_config(cfg) as client:
            stream = client.stream("Once upon a time, in a small village,", max_tokens=40)
            seen = []
            for chunk in stream:
                seen.append(chunk)
                if chunk.source == "cloud" and len([c for c in seen if c.source == "cloud"]) == 2:
                    proc.send_signal(signal.SIGKILL)
            r = stream.result
        assert r.route is not None and r.route.fallback is not None
        sources = [c.source for c in seen]
        assert sources[:2] == ["local", "local"] and "cloud" in sources and sources[-1] == "local"
        assert r.usage.completion_tokens == 40 or r.finish_reason == "stop"
    finally:
        stop(proc)


def test_corrupt_log_database_is_moved_aside_and_the_device_keeps_serving(
    cloud: dict[str, Any], model_cache: Path, tmp_path: Path
) -> None:
    (tmp_path / "log.db").write_bytes(b"definitely not sqlite" * 100)
    cfg = device_toml(
        tmp_path, model_cache, [cloud["port"]], min_mean_logprob=-0.0001, min_tokens=2
    )
    with Client.from_config(cfg) as client:
        r = client.generate("The sky is", max_tokens=5)
        assert r.route is not None and r.route.escalated
        engine = client.engine
        assert engine is not None and engine.log is not None
        assert engine.log.moved_aside is not None and engine.log.moved_aside.exists()
        assert len(engine.log) == 1
