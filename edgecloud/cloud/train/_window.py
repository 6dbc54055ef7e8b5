"""The records a round trains on: a window of receive times, and reading it from the store."""

from __future__ import annotations

from datetime import datetime, timezone

from edgecloud.cloud._records import StoredRecord
from edgecloud.cloud._settings import CloudSettings
from edgecloud.errors import InvalidRequestError

__all__ = ["parse_since", "read_records"]

_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float) -> float:
    """``24h``/``30m``/``7d``/``90s``/``2w`` before ``now``, or an ISO 8601 time (UTC when
    it names no zone), as Unix seconds.

    Raises:
        InvalidRequestError: neither form.
    """
    value = text.strip()
    unit = value[-1:].lower()
    if unit in _DURATION and value[:-1].replace(".", "", 1).isdigit():
        return now - float(value[:-1]) * _DURATION[unit]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"{text!r} is neither a duration (24h, 30m, 7d) nor an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def read_records(
    settings: CloudSettings, since: float | None, until: float | None
) -> list[StoredRecord]:
    """The records the cloud received in ``[since, until)`` (None: unbounded), oldest first."""
    from edgecloud.cloud._server import open_records

    store = open_records(settings.cloud, settings.cache_dir)
    try:
        return [r for r in store.records(since) if until is None or r.received_at < until]
    finally:
        store.close()
