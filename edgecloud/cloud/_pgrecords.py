"""The escalation record store in PostgreSQL (``cloud.records.url``), for more than one machine.

Same interface and guarantees as the SQLite :class:`~edgecloud.cloud.RecordStore`:
uploads are idempotent by record id (``ON CONFLICT (id) DO NOTHING``, the first upload
wins), and a batch is committed before its ids are acked (PostgreSQL's default
``synchronous_commit = on``: the commit is in the WAL on disk). Several service
replicas may write to one database; each holds one connection, used under a lock
from the gRPC worker threads, and opens it again once when the server dropped it
(a retried batch is harmless: it is idempotent).

The columns are those of SQLite's table (``REAL`` widened to ``DOUBLE PRECISION``:
PostgreSQL's ``REAL`` is 4 bytes); ``signals`` and ``extra`` stay JSON text, read
with ``::jsonb`` by :meth:`PgRecordStore.shadow_stats`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from edgecloud.cloud._records import RecordStore, ShadowSummary, StoredRecord, row_to_record
from edgecloud.common.records import RECORD_COLUMNS, EscalationRecord, record_row
from edgecloud.errors import ConfigError

__all__ = ["PgRecordStore"]

T = TypeVar("T")

_OWN = (("device", "TEXT"), ("received_at", "DOUBLE PRECISION NOT NULL"))
_ALL = tuple((n, k.replace("REAL", "DOUBLE PRECISION")) for n, k in (*RECORD_COLUMNS, *_OWN))
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS escalations (\n    seq BIGSERIAL,\n    "
    + ",\n    ".join(f"{name} {kind}" for name, kind in _ALL)
    + "\n)",
    "CREATE INDEX IF NOT EXISTS escalations_received ON escalations (received_at, seq)",
)
_COLUMNS = ", ".join(name for name, _ in _ALL)
_MARKS = ", ".join(["%s"] * len(_ALL))
# As in SQLite: a false/0 ``adapter_in_scope`` means the base model answered.
_FALSE = "IN ('false'::jsonb, '0'::jsonb)"
_ANSWERED_BY = (
    f"CASE WHEN (signals::jsonb -> 'adapter_in_scope') {_FALSE} THEN NULL "
    "ELSE (extra::jsonb ->> 'adapter_version')::numeric END"
)


class PgRecordStore(RecordStore):
    """Thread-safe, durable store of uploaded escalation records in PostgreSQL.

    Args:
        url: ``postgresql://user[:password]@host[:port]/database`` (libpq's URI form).

    Raises:
        ConfigError: psycopg is missing, or the server cannot be reached.
    """

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(
                "cloud.records.url needs psycopg: pip install 'edgecloud[postgres]'"
            ) from exc
        self._psycopg = psycopg
        self.url = url
        self._lock = threading.Lock()
        self._conn = self._connect()
        with self._lock, self._conn.transaction():
            for statement in _SCHEMA:
                self._conn.execute(statement)

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            raise ConfigError(f"cloud.records.url: cannot connect: {_first_line(exc)}") from exc

    def _run(self, fn: Callable[[Any], T]) -> T:
        """``fn(connection)`` under the lock, once more on a new connection when the
        server dropped the old one."""
        with self._lock:
            if self._conn.closed:
                self._conn = self._connect()
            try:
                return fn(self._conn)
            except self._psycopg.OperationalError:
                if not self._conn.closed and not self._conn.broken:
                    raise
                self._conn = self._connect()
                return fn(self._conn)

    def store(
        self,
        records: Sequence[EscalationRecord],
        *,
        device: str | None = None,
        received_at: float | None = None,
    ) -> list[str]:
        """Store ``records`` in one transaction; ids already stored are kept as they are.

        Returns:
            The ids of all ``records``, in order, once the transaction is committed.
        """
        now = time.time() if received_at is None else received_at
        rows = [(*record_row(r), device, now) for r in records]

        def insert(db: Any) -> None:
            with db.transaction(), db.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO escalations ({_COLUMNS}) VALUES ({_MARKS}) "
                    "ON CONFLICT (id) DO NOTHING",
                    rows,
                )

        self._run(insert)
        return [r.id for r in records]

    def records(self, since: float | None = None) -> list[StoredRecord]:
        """Records received at or after ``since`` (Unix time; None: all), oldest first."""
        query = f"SELECT {_COLUMNS} FROM escalations"
        args: tuple[Any, ...] = ()
        if since is not None:
            query += " WHERE received_at >= %s"
            args = (since,)
        rows = self._run(
            lambda db: db.execute(query + " ORDER BY received_at, seq", args).fetchall()
        )
        return [row_to_record(row) for row in rows]

    def shadow_stats(self, since: float | None = None) -> list[ShadowSummary]:
        """Shadow records received at or after ``since`` (None: all), summed up per
        adapter version that answered; the base model (None) first, then by version."""
        query = (
            f"SELECT {_ANSWERED_BY} AS version, COUNT(*), "
            f"COUNT(*) FILTER (WHERE (extra::jsonb -> 'agree') {_FALSE}) "
            "FROM escalations WHERE extra::jsonb ->> 'kind' = 'shadow'"
        )
        args: tuple[Any, ...] = ()
        if since is not None:
            query += " AND received_at >= %s"
            args = (since,)
        query += " GROUP BY 1 ORDER BY 1 NULLS FIRST"
        rows = self._run(lambda db: db.execute(query, args).fetchall())
        return [
            ShadowSummary(None if v is None else int(v), int(n), int(bad)) for v, n, bad in rows
        ]

    def __len__(self) -> int:
        (n,) = self._run(lambda db: db.execute("SELECT COUNT(*) FROM escalations").fetchone())
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _first_line(exc: BaseException) -> str:
    """The first line of a driver error (later lines may quote the connection string)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
