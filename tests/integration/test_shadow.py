"""Shadow checks end to end: devices check confident answers against a real cloud service
(127.0.0.1, a scripted engine: no model), upload the records, and the operator reads the
confidently-wrong rate per adapter version (`edgecloud cloud shadow`) while the next
round learns from the disagreements."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cli.app import app
from edgecloud.cloud import CloudServer
from edgecloud.cloud._records import RecordStore
from edgecloud.cloud.train._examples import examples_from_records
from edgecloud.config import CloudConfig, DeviceCloudConfig, DeviceShadowConfig
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import HybridEngine
from edgecloud.device._shadow import ShadowStats
from edgecloud.transport import CloudClient
from tests import scrape
from tests.fakes import ScriptedBackend
from tests.fakes_cloud import ScriptedEngine
from tests.unit.device.test_shadow import CALM, answer

CLOUD_SAYS = "the engine answers slowly"
# (what the device answers, the adapter version it runs): one is wrong, one is right.
DEVICES = [("one two three four", 2), (CLOUD_SAYS, None)]


async def fleet(tmp_path: Path, db: Path) -> list[dict[int | None, ShadowStats]]:
    """Each device answers once, checks the answer and uploads what it logged."""
    config = CloudConfig.model_validate({"insecure": True, "port": 0})
    server = await CloudServer.start(
        ScriptedEngine(CLOUD_SAYS), config, records=RecordStore(db),
        registry=AdapterRegistry(tmp_path / "registry"),
    )  # fmt: skip
    stats = []
    try:
        for n, (words, version) in enumerate(DEVICES):
            client = CloudClient(f"127.0.0.1:{server.port}", tls=False, max_attempts=1)
            engine = HybridEngine(
                ScriptedBackend(words), pool=EndpointPool([Endpoint(client, CircuitBreaker())]),
                router=CALM, cloud=DeviceCloudConfig(), log=EscalationLog(tmp_path / f"{n}.db"),
                shadow=DeviceShadowConfig(rate=1.0),
            )  # fmt: skip
            engine.adapter_version = version
            try:
                text, _ = await answer(engine)
                assert text == words
                await engine.wait_shadows()
                assert await engine.upload_pending() == 1
                stats.append(engine.shadow_stats())
            finally:
                await engine.aclose()
    finally:
        await server.stop(0)
    return stats


def test_shadow_checks_reach_the_operator_and_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "records.db"
    before = scrape.device()
    stats = asyncio.run(fleet(tmp_path, db))
    after = scrape.device()
    assert stats == [{2: ShadowStats(1, 1)}, {None: ShadowStats(1, 0)}]
    # Per version: version 2's confident answer was wrong, the base model's right.
    name = "edgecloud_device_shadow_requests_total"
    for outcome, version, n in (("agree", "base", 1), ("disagree", "2", 1),
                                ("disagree", "base", 0), ("agree", "2", 0),
                                ("failed", "2", 0), ("failed", "base", 0)):  # fmt: skip
        assert after.delta(before, name, outcome=outcome, version=version) == n

    store = RecordStore(db)
    try:
        summary = [(s.adapter_version, s.checked, s.disagreed) for s in store.shadow_stats()]
        (learned, replayed), relabel = examples_from_records(store.records())
    finally:
        store.close()
    assert summary == [(None, 1, 0), (2, 1, 1)]
    assert relabel == []
    assert (learned.answer, learned.shadow, learned.replay) == (CLOUD_SAYS, True, False)
    assert (replayed.answer, replayed.shadow, replayed.replay) == (CLOUD_SAYS, True, True)

    monkeypatch.setenv("EDGECLOUD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGECLOUD_CLOUD__RECORDS__PATH", str(db))
    monkeypatch.delenv("EDGECLOUD_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["cloud", "shadow"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines == [
        {"type": "shadow", "adapter_version": None, "checked": 1, "disagreed": 0,
         "confidently_wrong_rate": 0.0},
        {"type": "shadow", "adapter_version": 2, "checked": 1, "disagreed": 1,
         "confidently_wrong_rate": 1.0},
    ]  # fmt: skip
    recent = CliRunner().invoke(app, ["cloud", "shadow", "--since", "1h"])
    assert recent.exit_code == 0 and recent.output == result.output
    future = CliRunner().invoke(app, ["cloud", "shadow", "--since", "2999-01-01"])
    assert future.exit_code == 0 and future.output == ""
    bad = CliRunner().invoke(app, ["cloud", "shadow", "--since", "soon"])
    assert bad.exit_code == 2 and "neither a duration" in bad.output
