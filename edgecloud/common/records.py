"""The escalation record: one schema for the device's log and the cloud's store.

A device keeps what it escalated in its SQLite log until the cloud has stored it;
the cloud keeps the uploads in its own SQLite store. Both tables share the
columns declared here once (:data:`RECORD_COLUMNS`), and each adds its own
(the device: ``private``; the cloud: ``device`` and ``received_at``). Queries
name their columns, so a table created by an older release reads the same.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RECORD_COLUMNS",
    "EscalationRecord",
    "create_table_sql",
    "record_from_row",
    "record_row",
]


@dataclass(frozen=True, slots=True)
class EscalationRecord:
    """One escalated request and what came of it."""

    prompt: str
    local_partial: str
    cloud_answer: str
    route_policy: str
    route_reason: str
    signals: Mapping[str, Any] = field(default_factory=dict)
    latency_ms: float = 0.0
    private: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping, e.g. the knowledge passages the cloud used."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)


RECORD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT PRIMARY KEY"),
    ("created_at", "REAL NOT NULL"),
    ("prompt", "TEXT NOT NULL"),
    ("local_partial", "TEXT NOT NULL"),
    ("cloud_answer", "TEXT NOT NULL"),
    ("route_policy", "TEXT NOT NULL"),
    ("route_reason", "TEXT NOT NULL"),
    ("signals", "TEXT NOT NULL"),
    ("latency_ms", "REAL NOT NULL"),
    ("extra", "TEXT NOT NULL"),
)
"""(name, SQLite type) of the columns every record table has, in :func:`record_row` order."""


def create_table_sql(
    table: str, extra_columns: Sequence[tuple[str, str]], *, index: tuple[str, str]
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a record table with the shared columns first,
    and the index ``(name, column)``."""
    cols = ",\n    ".join(f"{name} {kind}" for name, kind in (*RECORD_COLUMNS, *extra_columns))
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {cols}\n);\n"
        f"CREATE INDEX IF NOT EXISTS {index[0]} ON {table} ({index[1]});\n"
    )


def record_row(record: EscalationRecord) -> tuple[Any, ...]:
    """The values of :data:`RECORD_COLUMNS` for ``record``."""
    return (
        record.id, record.created_at, record.prompt, record.local_partial, record.cloud_answer,
        record.route_policy, record.route_reason, json.dumps(dict(record.signals)),
        float(record.latency_ms), json.dumps(dict(record.extra)),
    )  # fmt: skip


def record_from_row(row: Sequence[Any], *, private: bool = False) -> EscalationRecord:
    """The record stored as ``row`` (values in :data:`RECORD_COLUMNS` order)."""
    (rid, created_at, prompt, partial, answer, policy, reason, signals, latency, extra) = row
    return EscalationRecord(
        prompt=prompt, local_partial=partial, cloud_answer=answer, route_policy=policy,
        route_reason=reason, signals=_json_object(signals), latency_ms=float(latency),
        private=private, extra=_json_object(extra), id=rid, created_at=float(created_at),
    )  # fmt: skip


def _json_object(text: str) -> Mapping[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
