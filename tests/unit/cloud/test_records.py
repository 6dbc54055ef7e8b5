"""The cloud's escalation record store on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgecloud.cloud._records import RecordStore
from edgecloud.common.records import EscalationRecord


def record(i: int, **kwargs: object) -> EscalationRecord:
    fields: dict[str, object] = {
        "prompt": f"question {i}", "local_partial": "part", "cloud_answer": f"answer {i}",
        "route_policy": "confidence", "route_reason": "low", "signals": {"i": i}, "id": f"r{i}",
    }  # fmt: skip
    return EscalationRecord(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_store_is_idempotent_by_id_and_acks_every_id(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "r.db")
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


def test_records_survive_reopen_and_since_filters(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.db"
    store = RecordStore(path)
    store.store([record(1)], received_at=100.0)
    store.store([record(2)], received_at=200.0)
    store.close()
    again = RecordStore(path)
    assert [s.record.id for s in again.records()] == ["r1", "r2"]
    assert [s.record.id for s in again.records(since=150.0)] == ["r2"]
    assert again.records()[0].device is None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_batch_stores_nothing(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "r.db")
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


def test_shadow_stats_sum_up_the_checks_per_version_that_answered(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "r.db")
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
