"""The cloud's escalation record store on real SQLite files and a real PostgreSQL server.

Every test runs on both: SQLite (the default) and PostgreSQL (``cloud.records.url``; a
throwaway server from tests/pgserver.py, a new database per test; skipped without
the binaries).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgecloud.cloud._pgrecords import PgRecordStore
from edgecloud.cloud._records import RecordStore
from edgecloud.cloud._server import open_records
from edgecloud.common.records import EscalationRecord
from edgecloud.config import CloudConfig

Open = Callable[..., RecordStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    """Opens this test's store (the same one each call): SQLite file or PostgreSQL database;
    closes what it opened after the test."""
    opened: list[RecordStore] = []

    def keep(store: RecordStore) -> RecordStore:
        opened.append(store)
        return store

    if request.param == "sqlite":
        yield lambda **caps: keep(RecordStore(tmp_path / "sub" / "r.db", **caps))
    else:
        url = _new_database(request)
        yield lambda **caps: keep(PgRecordStore(url, **caps))
    for store in opened:
        store.close()


def _new_database(request: pytest.FixtureRequest) -> str:
    return _new_database_at(request.getfixturevalue("postgres_url"))


def _new_database_at(server: str) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


def record(i: int, **kwargs: object) -> EscalationRecord:
    fields: dict[str, object] = {
        "prompt": f"question {i}", "local_partial": "part", "cloud_answer": f"answer {i}",
        "route_policy": "confidence", "route_reason": "low", "signals": {"i": i}, "id": f"r{i}",
    }  # fmt: skip
    return EscalationRecord(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_store_is_idempotent_by_id_and_acks_every_id(open_store: Open) -> None:
    store = open_store()
    batch = [record(1), record(2)]
    assert store.store(batch, device="dev-a") == ["r1", "r2"]
    changed = [record(2, cloud_answer="different"), record(3)]
    assert store.store(changed, device="dev-b") == ["r2", "r3"]
    got = {s.record.id: s for s in store.records()}
    assert sorted(got) == ["r1", "r2", "r3"] and len(store) == 3
    # The first upload of an id wins, with the device that sent it.
    assert got["r2"].record.cloud_answer == "answer 2" and got["r2"].device == "dev-a"
    assert got["r2"].record == batch[1]
    assert got["r3"].device == "dev-b"


def test_records_survive_reopen_and_since_filters(open_store: Open) -> None:
    store = open_store()
    store.store([record(1)], received_at=100.0)
    store.store([record(2)], received_at=200.0)
    store.store([record(3, created_at=1.0)], received_at=200.0)  # same time: upload order
    store.close()
    again = open_store()
    assert [s.record.id for s in again.records()] == ["r1", "r2", "r3"]
    assert [s.record.id for s in again.records(since=150.0)] == ["r2", "r3"]
    assert again.records()[0].device is None and again.records()[0].received_at == 100.0
    assert again.records()[0].record == record(1, created_at=again.records()[0].record.created_at)
    if type(again) is RecordStore:
        with sqlite3.connect(again.path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_batch_stores_nothing(open_store: Open) -> None:
    store = open_store()
    bad = record(2, signals={"x": object()})  # not JSON-serializable: fails mid-batch
    try:
        store.store([record(1), bad])
    except TypeError:
        pass
    else:  # pragma: no cover - the test's premise
        raise AssertionError("expected TypeError")
    assert len(store) == 0


def shadow(i: int, version: int | None, agree: bool, **signals: object) -> EscalationRecord:
    extra: dict[str, object] = {"kind": "shadow", "agree": agree}
    if version is not None:
        extra["adapter_version"] = version
    return record(i, extra=extra, signals=signals)


def test_shadow_stats_sum_up_the_checks_per_version_that_answered(open_store: Open) -> None:
    store = open_store()
    store.store([shadow(1, 3, False), shadow(2, 3, True), shadow(3, 3, False)], received_at=100.0)
    store.store(
        [
            shadow(4, None, True),
            shadow(5, 2, True),
            # Outside version 3's scope the base model answered: it counts for the base.
            shadow(6, 3, False, adapter_in_scope=False),
            shadow(7, 3, True, adapter_in_scope=True),
            record(8),  # an escalation: no check
            record(9, extra={"kind": "replay", "adapter_version": 3}),
        ],
        received_at=200.0,
    )
    got = [(s.adapter_version, s.checked, s.disagreed) for s in store.shadow_stats()]
    assert got == [(None, 2, 1), (2, 1, 0), (3, 4, 2)]
    assert [s.confidently_wrong_rate for s in store.shadow_stats()] == [0.5, 0.0, 0.5]
    recent = [(s.adapter_version, s.checked, s.disagreed) for s in store.shadow_stats(since=150.0)]
    assert recent == [(None, 2, 1), (2, 1, 0), (3, 1, 0)]
    assert store.shadow_stats(since=300.0) == []


def test_max_records_evicts_the_oldest_first(open_store: Open) -> None:
    store = open_store(max_records=3)
    for i in range(5):  # arrival order, not id order, decides
        store.store([record(9 - i)], received_at=1000.0 + i)
    assert [s.record.id for s in store.records()] == ["r7", "r6", "r5"]
    assert store.evicted == 2
    # one batch bigger than the cap keeps its newest records
    store.store([record(20 + i) for i in range(4)], received_at=2000.0)
    assert len(store) == 3 and {s.record.id for s in store.records()} <= {
        f"r{20 + i}" for i in range(4)
    }
    # a reopened store with a smaller cap trims at start
    assert len(open_store(max_records=1)) == 1


def test_max_age_evicts_what_is_too_old(open_store: Open) -> None:
    now = time.time()
    store = open_store()
    store.store([record(1)], received_at=now - 10 * 86_400)
    store.store([record(2)], received_at=now - 2 * 86_400)
    store.store([record(3)], received_at=now)
    assert len(store) == 3  # no cap: kept forever
    capped = open_store(max_age_s=5 * 86_400)  # at start
    assert [s.record.id for s in capped.records()] == ["r2", "r3"] and capped.evicted == 1
    assert capped.evict(now=now + 4 * 86_400) == 1  # r2 is 6 days old then
    assert [s.record.id for s in capped.records()] == ["r3"]
    capped.store([record(4)], received_at=now - 30 * 86_400)  # stored and gone in one batch
    assert [s.record.id for s in capped.records()] == ["r3"]
    with pytest.raises(ValueError, match="max_age_s"):
        open_store(max_age_s=0)


def test_retention_settings_reach_the_store(tmp_path: Path) -> None:
    cfg = CloudConfig(records={"path": tmp_path / "r.db", "max_records": 2, "max_age_days": 1.5})
    store = open_records(cfg)
    try:
        assert (store.max_records, store.max_age_s) == (2, 1.5 * 86_400)
    finally:
        store.close()


def test_postgres_store_reconnects_after_the_server_drops_it(postgres_url: str) -> None:
    import psycopg

    from edgecloud.cloud._server import open_records
    from edgecloud.config import CloudConfig

    url = _new_database_at(postgres_url)
    store = open_records(CloudConfig.model_validate({"records": {"url": url}}))
    assert isinstance(store, PgRecordStore)
    try:
        store.store([record(1)])
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            # Ends every session on the test's database, the store's among them.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (url.rsplit("/", 1)[1],),
            )
        assert store.store([record(1), record(2)]) == ["r1", "r2"]
        assert [s.record.id for s in store.records()] == ["r1", "r2"] and len(store) == 2
    finally:
        store.close()


def test_postgres_url_that_cannot_connect_is_a_config_error() -> None:
    from edgecloud.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot connect"):
        PgRecordStore("postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")


def test_a_round_reads_its_window_from_postgres(postgres_url: str, tmp_path: Path) -> None:
    """`cloud train` reads records through open_records: from PostgreSQL when the URL is set."""
    from edgecloud.cloud.train._window import read_records
    from edgecloud.config import Settings

    url = _new_database_at(postgres_url)
    store = PgRecordStore(url)
    try:
        store.store([record(1)], received_at=100.0)
        store.store([record(2)], received_at=200.0)
        store.store([record(3)], received_at=300.0)
    finally:
        store.close()
    settings = Settings.load(cache_dir=tmp_path, cloud={"records": {"url": url}})
    assert [s.record.id for s in read_records(settings, 150.0, 300.0)] == ["r2"]
    assert not (tmp_path / "cloud" / "escalations.sqlite3").exists()  # SQLite left alone
