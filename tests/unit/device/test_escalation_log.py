import sqlite3
from pathlib import Path

import pytest

from edgecloud.common.records import EscalationRecord
from edgecloud.device._escalation_log import EscalationLog


def rec(i: int, *, private: bool = False) -> EscalationRecord:
    return EscalationRecord(
        prompt=f"q{i}", local_partial="", cloud_answer=f"a{i}", route_policy="learned",
        route_reason="r", signals={"p": 0.9}, latency_ms=12.5, private=private,
        extra={"passages": ["x"]}, created_at=1000.0 + i,
    )  # fmt: skip


def test_wal_mode_roundtrip_and_ack(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    for i in range(5):
        log.append(rec(i))
    assert (
        sqlite3.connect(tmp_path / "log.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    )
    batch = log.pending(limit=3)
    assert [r.prompt for r in batch] == ["q0", "q1", "q2"]
    assert batch[0].signals == {"p": 0.9} and batch[0].extra == {"passages": ["x"]}
    assert log.acknowledge([r.id for r in batch]) == 3
    assert [r.prompt for r in log.pending()] == ["q3", "q4"]
    assert log.acknowledge([batch[0].id]) == 0  # acknowledging twice is harmless


def test_private_records_are_never_pending_nor_acknowledged(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    secret = rec(1, private=True)
    log.append(secret)
    log.append(rec(2))
    assert [r.prompt for r in log.pending()] == ["q2"]
    assert log.acknowledge([secret.id]) == 0
    assert len(log) == 2


def test_cap_evicts_oldest_first(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db", max_records=3)
    for i in range(5):
        log.append(rec(i))
    assert [r.prompt for r in log.all()] == ["q2", "q3", "q4"]
    assert log.evicted == 2


def test_records_survive_reopen(tmp_path: Path) -> None:
    log = EscalationLog(tmp_path / "log.db")
    log.append(rec(7))
    log.close()
    assert [r.prompt for r in EscalationLog(tmp_path / "log.db").pending()] == ["q7"]


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(b"this is not a sqlite database at all" * 200)
    log = EscalationLog(path)
    assert log.moved_aside is not None and log.moved_aside.exists()
    assert log.moved_aside.read_bytes().startswith(b"this is not")
    log.append(rec(1))
    assert len(log) == 1


def test_bad_cap() -> None:
    with pytest.raises(ValueError, match="max_records"):
        EscalationLog(":memory:", max_records=0)
