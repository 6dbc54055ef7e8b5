"""Structured logs and request ids that travel from the device to the cloud.

One escalated request leaves lines in two processes: the device's (routing, the
hand-off, the fallback) and the cloud's (the generation, the stored record). Both
sides bind the request's id to a context variable while they work on it, and the
JSON formatter puts it in every line, so ``request_id`` alone finds both halves:

* the device makes one id per :meth:`~edgecloud.device.HybridEngine.stream` call (or
  takes the caller's: the ``request_id`` argument, else the id bound here already);
* :class:`~edgecloud.transport.CloudClient` sends it in the ``x-request-id``
  metadata of its generate and upload calls (and in the request message);
* the cloud's gRPC server binds it for the call (an interceptor), so every line
  its servicer logs carries it.

The id lives in a :class:`~contextvars.ContextVar`: tasks and ``asyncio.to_thread``
workers started while it is bound inherit it; plain threads do not.

:func:`configure` installs the handler the command line uses (``log_format``,
``log_level`` settings); library code can call it too.

Examples:
    >>> from edgecloud.common import logs
    >>> logs.configure(format="json", level="INFO")                   # doctest: +SKIP
    >>> with logs.bind_request_id("req-42"):                            # doctest: +SKIP
    ...     logging.getLogger("edgecloud.app").info("hello", extra={"user": 7})
    {"ts": "...", "level": "INFO", "logger": "edgecloud.app", "message": "hello",
     "request_id": "req-42", "user": 7}
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Literal, TextIO

__all__ = [
    "MAX_REQUEST_ID",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "bind_request_id",
    "clean_request_id",
    "configure",
    "current_request_id",
    "formatter",
    "new_request_id",
    "set_request_id",
]

REQUEST_ID_HEADER = "x-request-id"
"""The gRPC metadata key (and HTTP header, lower-cased) that carries a request's id."""

MAX_REQUEST_ID = 128
"""Longer ids are cut: an id comes from the caller and ends up in every log line."""

LogFormat = Literal["text", "json"]

_REQUEST_ID: ContextVar[str | None] = ContextVar("edgecloud_request_id", default=None)

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

# What every LogRecord carries; anything else was passed in ``extra=`` and is written out.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "request_id"}
)


def new_request_id() -> str:
    """A fresh id: 32 hex digits (a random UUID)."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if one is bound."""
    return _REQUEST_ID.get()


def clean_request_id(value: str | None) -> str | None:
    """``value`` as an id to bind: its printable ASCII characters but spaces, at most
    :data:`MAX_REQUEST_ID` of them; None when nothing usable is left."""
    if not value:
        return None
    cleaned = "".join(c for c in value if " " < c <= "~")[:MAX_REQUEST_ID]
    return cleaned or None


@contextlib.contextmanager
def bind_request_id(request_id: str | None) -> Iterator[str | None]:
    """Bind ``request_id`` to this context for the block (None: leave it as it is)."""
    if request_id is None:
        yield current_request_id()
        return
    token = _REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        _REQUEST_ID.reset(token)


def set_request_id(request_id: str | None) -> None:
    """Bind ``request_id`` for the rest of this context (a task or a gRPC call's task):
    for code that cannot wrap its work in :func:`bind_request_id`."""
    _REQUEST_ID.set(request_id)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601, milliseconds), ``level``,
    ``logger``, ``message``, ``request_id`` when one is bound (or passed in ``extra``),
    every other ``extra`` field, and ``exc`` with the traceback of an exception.

    Values JSON cannot hold are written as their ``str()``, so a log call never fails
    on what it was given.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id is not None:
            out["request_id"] = request_id
        for key, value in vars(record).items():
            # A leading underscore is a library's private mark on every record (Ray's log
            # record factory adds _ray_timestamp_ns once it is imported), not an extra.
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """The plain format, with ``[request_id]`` after the logger's name when one is bound."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id is None:
            return line
        head, sep, rest = line.partition(": ")
        return f"{head} [{request_id}]{sep}{rest}"


def formatter(format: LogFormat) -> logging.Formatter:
    """The formatter of ``format``: :class:`JsonFormatter`, or the plain text one."""
    if format == "json":
        return JsonFormatter()
    if format == "text":
        return _TextFormatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {format!r} (text or json)")


def configure(
    format: LogFormat = "text",
    level: str | int = "WARNING",
    *,
    stream: TextIO | None = None,
    force: bool = False,
) -> logging.Handler | None:
    """Log to ``stream`` (default stderr) in ``format`` at ``level``, as the CLI does.

    Like :func:`logging.basicConfig`, it does nothing when the root logger already
    has handlers (an application's own setup wins), unless ``force``.

    Returns:
        The handler installed, or None when the root logger was left alone.
    """
    root = logging.getLogger()
    if root.handlers and not force:
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(format))
    logging.basicConfig(level=level, handlers=[handler], force=force)
    return handler
