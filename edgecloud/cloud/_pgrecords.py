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
from collections.abc import Callable
from typing import Any, TypeVar

from edgecloud.cloud._records import RecordStore
from edgecloud.common.records import RECORD_COLUMNS
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
        max_records: keep at most this many records; None: no cap.
        max_age_s: delete records received more than this many seconds ago; None: no cap.

    Raises:
        ConfigError: psycopg is missing, or the server cannot be reached.
    """

    _mark = "%s"
    _insert_sql = (
        f"INSERT INTO escalations ({_COLUMNS}) VALUES ({_MARKS}) ON CONFLICT (id) DO NOTHING"
    )
    _order = "received_at, seq"
    _answered_by = _ANSWERED_BY
    _disagreed = f"COUNT(*) FILTER (WHERE (extra::jsonb -> 'agree') {_FALSE})"
    _is_shadow = "extra::jsonb ->> 'kind' = 'shadow'"
    _by_version = "GROUP BY 1 ORDER BY 1 NULLS FIRST"
    _key = "seq"
    _greatest = "GREATEST"

    def __init__(
        self, url: str, *, max_records: int | None = None, max_age_s: float | None = None
    ) -> None:
        self._caps(max_records, max_age_s)
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
        self.evict()

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

    def _insert(self, rows: list[tuple[Any, ...]], now: float) -> int:
        def insert(db: Any) -> int:
            evicted = 0
            with db.transaction(), db.cursor() as cur:
                if rows:
                    cur.executemany(self._insert_sql, rows)
                for sql, args in self._evictions(now):
                    cur.execute(sql, args)
                    evicted += max(cur.rowcount, 0)
            return evicted

        evicted = self._run(insert)
        with self._lock:
            self.evicted += evicted
        return evicted

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._run(lambda db: db.execute(sql, args).fetchall())
        return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _first_line(exc: BaseException) -> str:
    """The first line of a driver error (later lines may quote the connection string)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
