"""The device's escalation log: SQLite in WAL mode, store-and-forward to the cloud.

Every escalation is recorded (prompt, the local partial answer, signals, the route
decision, the cloud's answer, latency). Records wait here until the cloud
acknowledges them, then are deleted; uploading is idempotent by record id, so a
batch sent twice (the device died between send and acknowledge) is stored once.
Records marked private never leave the device: :meth:`EscalationLog.pending`
never returns them.

Size cap and eviction: at most ``max_records`` records are kept. When a write
would exceed the cap, the oldest records are deleted first (private or not),
and the number evicted is counted in :attr:`EscalationLog.evicted`.

A database that SQLite reports as corrupt is moved aside (``<name>.corrupt-<time>``)
and a fresh one is created, so the device keeps serving.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgecloud.common.metrics import metrics
from edgecloud.common.records import (
    RECORD_COLUMNS,
    EscalationRecord,
    create_table_sql,
    record_from_row,
    record_row,
)
from edgecloud.errors import DeviceError

__all__ = ["EscalationLog"]

log = logging.getLogger("edgecloud.device.log")

_COLUMNS = ", ".join(name for name, _ in (*RECORD_COLUMNS, ("private", "")))
_MARKS = ", ".join("?" * (len(RECORD_COLUMNS) + 1))
_SCHEMA = create_table_sql(
    "escalations", [("private", "INTEGER NOT NULL")], index=("escalations_created", "created_at")
)

# Cloud tokens spent (device.router.budget_tokens_*), kept here so that a restarted device
# keeps what it spent in the current hour and day; wall-clock Unix time.
_USAGE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cloud_usage (at REAL NOT NULL, tokens INTEGER NOT NULL);\n"
    "CREATE INDEX IF NOT EXISTS cloud_usage_at ON cloud_usage (at);"
)
_USAGE_KEPT_S = 86_400.0
"""The longest budget window: older spending is deleted."""


class EscalationLog:
    """A thread-safe SQLite log of escalations.

    Args:
        path: database file (created with its directory).
        max_records: cap on stored records; the oldest are evicted first.
    """

    def __init__(self, path: str | Path, *, max_records: int = 10_000) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.path = Path(path)
        self.max_records = max_records
        self.evicted = 0
        self.moved_aside: Path | None = None
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self.moved_aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.warning(
                "escalation log %s is corrupt (%s); moved aside to %s",
                self.path,
                exc,
                self.moved_aside,
            )
            self.path.replace(self.moved_aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as again:
                raise DeviceError(f"cannot create escalation log {self.path}: {again}") from again

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.executescript(_SCHEMA)
            db.executescript(_USAGE_SCHEMA)
            _publish_backlog(db)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def append(self, record: EscalationRecord) -> None:
        """Store a record, evicting the oldest ones beyond the cap."""
        row = (*record_row(record), int(record.private))
        with self._tx() as db:
            db.execute(f"INSERT OR REPLACE INTO escalations ({_COLUMNS}) VALUES ({_MARKS})", row)
            (count,) = db.execute("SELECT COUNT(*) FROM escalations").fetchone()
            excess = count - self.max_records
            if excess > 0:
                db.execute(
                    "DELETE FROM escalations WHERE id IN "
                    "(SELECT id FROM escalations ORDER BY created_at, id LIMIT ?)",
                    (excess,),
                )
                self.evicted += excess
            _publish_backlog(db)

    def pending(self, limit: int = 100) -> list[EscalationRecord]:
        """The oldest records waiting for upload, never the private ones."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM escalations WHERE private = 0 "
                "ORDER BY created_at, id LIMIT ?",
                (limit,),
            ).fetchall()
        return [_from_row(r) for r in rows]

    def acknowledge(self, ids: Sequence[str]) -> int:
        """Delete records the cloud has stored; returns how many were deleted."""
        if not ids:
            return 0
        with self._tx() as db:
            cur = db.executemany(
                "DELETE FROM escalations WHERE id = ? AND private = 0", [(i,) for i in ids]
            )
            _publish_backlog(db)
            return cur.rowcount

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM escalations").fetchone()
        return int(n)

    def all(self) -> list[EscalationRecord]:
        """Every record, private ones included, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM escalations ORDER BY created_at, id"
            ).fetchall()
        return [_from_row(r) for r in rows]

    def add_usage(self, at: float, tokens: int) -> None:
        """Record ``tokens`` cloud tokens spent at ``at`` (Unix time), dropping spending
        older than the longest budget window."""
        with self._tx() as db:
            db.execute("INSERT INTO cloud_usage (at, tokens) VALUES (?, ?)", (at, tokens))
            db.execute("DELETE FROM cloud_usage WHERE at < ?", (at - _USAGE_KEPT_S,))

    def usage(self, since: float) -> list[tuple[float, int]]:
        """``(at, tokens)`` of the cloud spending recorded at or after ``since``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, tokens FROM cloud_usage WHERE at >= ? ORDER BY at", (since,)
            ).fetchall()
        return [(float(at), int(n)) for at, n in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _publish_backlog(db: sqlite3.Connection) -> None:
    """The records waiting for upload (private ones never leave), in the metrics."""
    (n,) = db.execute("SELECT COUNT(*) FROM escalations WHERE private = 0").fetchone()
    metrics().upload_backlog.set(n)


def _from_row(r: Sequence[Any]) -> EscalationRecord:
    return record_from_row(r[:-1], private=bool(r[-1]))
