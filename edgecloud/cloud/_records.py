"""The cloud's store of escalation records uploaded by devices (SQLite, WAL).

This is the default; ``cloud.records.url`` puts them in PostgreSQL instead
(:mod:`edgecloud.cloud._pgrecords`, the same interface and guarantees).

Devices upload what they escalated (``UploadEscalations``) so the cloud can
later train routers and adapters on it. Uploads are idempotent by record id
(``INSERT OR IGNORE``): a device that died between sending and reading the ack
sends the batch again and it is stored once. A batch is committed (WAL,
``synchronous=FULL``) before the ack is sent, so an acked id survives a crash of
the service or the machine.

Each record keeps the identity of the device that uploaded it (its token name,
``None`` when the service runs without auth); the first upload of an id wins.

Retention: ``max_records`` and ``max_age_s`` (``cloud.records.max_records`` and
``max_age_days``) cap the store; past a cap the oldest records (by arrival) are deleted
first, in the transaction that stores a batch, and when the store opens. A record
evicted before a training round read it is lost to training, which is the point: the
cap bounds disk and keeps what trains adapters recent.

Shadow records (``extra["kind"] == "shadow"``: a confident device answer the cloud was
asked too, see ``device.shadow``) say whether the two agreed; :meth:`RecordStore.shadow_stats`
sums them up per adapter version, the confidently-wrong rate an operator watches after
each rollout.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecloud.common.records import (
    RECORD_COLUMNS,
    EscalationRecord,
    create_table_sql,
    record_from_row,
    record_row,
)

__all__ = ["RecordStore", "ShadowSummary", "StoredRecord", "row_to_record"]

_OWN = (("device", "TEXT"), ("received_at", "REAL NOT NULL"))
_SCHEMA = create_table_sql("escalations", _OWN, index=("escalations_received", "received_at"))
_COLUMNS = ", ".join(name for name, _ in (*RECORD_COLUMNS, *_OWN))
_MARKS = ", ".join("?" * (len(RECORD_COLUMNS) + len(_OWN)))
# The model that gave a shadowed answer: the adapter version the record names, unless
# the request was outside that adapter's scope (the base model answered it then).
_ANSWERED_BY = (
    "CASE WHEN json_extract(signals, '$.adapter_in_scope') = 0 THEN NULL "
    "ELSE json_extract(extra, '$.adapter_version') END"
)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """An escalation record as the cloud keeps it, with who sent it and when it arrived."""

    record: EscalationRecord
    device: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class ShadowSummary:
    """The shadow checks of the answers one model version gave, across devices."""

    adapter_version: int | None
    """None: the base model (no adapter, or a request outside the adapter's scope)."""
    checked: int
    disagreed: int
    """Checks where the cloud's answer did not agree with the device's."""

    @property
    def confidently_wrong_rate(self) -> float:
        """``disagreed / checked``: the share of confident answers the cloud contradicted."""
        return self.disagreed / self.checked if self.checked else 0.0


class RecordStore:
    """Thread-safe, durable store of uploaded escalation records.

    Args:
        path: SQLite database file (created with its directory).
        max_records: keep at most this many records; None: no cap.
        max_age_s: delete records received more than this many seconds ago; None: no cap.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_records: int | None = None,
        max_age_s: float | None = None,
    ) -> None:
        self._caps(max_records, max_age_s)
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection used under a lock: the gRPC handlers call in from worker threads.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the ack that reports it is sent.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self.evict()

    def _caps(self, max_records: int | None, max_age_s: float | None) -> None:
        if max_records is not None and max_records < 1:
            raise ValueError("max_records must be at least 1")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.max_records = max_records
        self.max_age_s = max_age_s
        self.evicted = 0
        """Records deleted by the caps since this store was opened."""

    # The SQL dialect; PostgreSQL's store (edgecloud.cloud._pgrecords) replaces these.
    _mark = "?"
    _insert_sql = f"INSERT OR IGNORE INTO escalations ({_COLUMNS}) VALUES ({_MARKS})"
    _order = "received_at, rowid"
    _answered_by = _ANSWERED_BY
    _disagreed = "COALESCE(SUM(json_extract(extra, '$.agree') = 0), 0)"
    _is_shadow = "json_extract(extra, '$.kind') = 'shadow'"
    _by_version = "GROUP BY version ORDER BY version IS NOT NULL, version"
    _key = "rowid"
    _greatest = "max"

    def _evictions(self, now: float) -> list[tuple[str, tuple[Any, ...]]]:
        """The DELETE statements (with their arguments) that apply the caps at ``now``."""
        out: list[tuple[str, tuple[Any, ...]]] = []
        if self.max_age_s is not None:
            out.append((f"DELETE FROM escalations WHERE received_at < {self._mark}",
                        (now - self.max_age_s,)))  # fmt: skip
        if self.max_records is not None:
            oldest = (
                f"SELECT {self._key} FROM escalations ORDER BY {self._order} LIMIT "
                f"{self._greatest}(0, (SELECT COUNT(*) FROM escalations) - {self._mark})"
            )
            out.append((f"DELETE FROM escalations WHERE {self._key} IN ({oldest})",
                        (self.max_records,)))  # fmt: skip
        return out

    def evict(self, now: float | None = None) -> int:
        """Apply the caps now (storing a batch does it too); returns the records deleted."""
        if self.max_records is None and self.max_age_s is None:
            return 0  # no write, so a store opened only to read stays read-only
        return self._insert([], time.time() if now is None else now)

    def store(
        self,
        records: Sequence[EscalationRecord],
        *,
        device: str | None = None,
        received_at: float | None = None,
    ) -> list[str]:
        """Store ``records`` in one transaction; ids already stored are kept as they are.

        Returns:
            The ids of all ``records`` (new and already stored), in order, once the
            transaction is committed: all are stored.
        """
        now = time.time()
        at = now if received_at is None else received_at
        self._insert([(*record_row(r), device, at) for r in records], now)
        return [r.id for r in records]

    def _insert(self, rows: list[tuple[Any, ...]], now: float) -> int:
        """Insert ``rows`` (ids already stored are skipped), apply the caps at ``now`` and
        commit, all or nothing; returns the records the caps deleted."""
        evicted = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    self._db.executemany(self._insert_sql, rows)
                for sql, args in self._evictions(now):
                    evicted += self._db.execute(sql, args).rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.evicted += evicted
        return evicted

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def records(self, since: float | None = None) -> list[StoredRecord]:
        """Records received at or after ``since`` (Unix time; None: all), oldest first."""
        query = f"SELECT {_COLUMNS} FROM escalations"
        args: tuple[Any, ...] = ()
        if since is not None:
            query += f" WHERE received_at >= {self._mark}"
            args = (since,)
        rows = self._query(f"{query} ORDER BY {self._order}", args)
        return [row_to_record(row) for row in rows]

    def shadow_stats(self, since: float | None = None) -> list[ShadowSummary]:
        """Shadow records received at or after ``since`` (None: all), summed up per
        adapter version that answered; the base model (None) first, then by version."""
        query = (
            f"SELECT {self._answered_by} AS version, COUNT(*), {self._disagreed} "
            f"FROM escalations WHERE {self._is_shadow}"
        )
        args: tuple[Any, ...] = ()
        if since is not None:
            query += f" AND received_at >= {self._mark}"
            args = (since,)
        rows = self._query(f"{query} {self._by_version}", args)
        return [
            ShadowSummary(None if v is None else int(v), int(n), int(bad)) for v, n, bad in rows
        ]

    def __len__(self) -> int:
        [(n,)] = self._query("SELECT COUNT(*) FROM escalations")
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def row_to_record(row: Sequence[Any]) -> StoredRecord:
    """A stored row (record columns, then device and received_at) as a :class:`StoredRecord`."""
    *fields, device, received_at = row
    return StoredRecord(record_from_row(fields), device, float(received_at))
