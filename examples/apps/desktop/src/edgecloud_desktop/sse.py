"""Reading a device's streamed answer: server-sent events from ``/v1/completions``.

Each event is a ``data: <json>`` line; ``data: [DONE]`` ends the stream. A token chunk
carries ``choices[0].text`` and ``edgecloud: {source, retracted}``; the chunk with a
``finish_reason`` carries ``edgecloud: {source, route, finish, ...}``. An error after
the stream started arrives as ``data: {"error": {...}}`` (docs/http.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from edgecloud_desktop.events import Delta, Event, Final

DONE = "[DONE]"


class StreamError(RuntimeError):
    """The device reported an error, before or during the answer."""


def data_lines(lines: Iterable[str]) -> Iterator[str]:
    """The payload of each ``data:`` line; comments (``:``) and other fields are skipped.

    The endpoint sends one ``data:`` line per event, so events need no reassembly.
    """
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


def decode(payload: str) -> list[Event]:
    """The events of one ``data:`` payload (none for ``[DONE]`` or a chunk without text).

    Raises:
        StreamError: the payload is an error object, or not JSON.
    """
    if payload == DONE:
        return []
    try:
        chunk = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise StreamError(f"the device sent something that is not JSON: {payload[:80]!r}") from exc
    if not isinstance(chunk, dict):
        raise StreamError("the device sent an event that is not an object")
    if "error" in chunk:
        raise StreamError(error_message(chunk))
    ext: Mapping[str, Any] = chunk.get("edgecloud") or {}
    events: list[Event] = []
    for choice in chunk.get("choices") or []:
        text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        retracted = int(ext.get("retracted") or 0)
        if text or retracted:
            source = str(ext.get("source") or "local")
            events.append(Delta(text, "local" if source == "mixed" else source, retracted))
        if choice.get("finish_reason"):
            events.append(Final.from_extension(ext, choice["finish_reason"]))
    return events


def error_message(body: object) -> str:
    """The message of an OpenAI-shaped error (``{"error": {"message": ...}}``)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return "the device answered with an error"


async def events(lines: AsyncIterable[str]) -> AsyncIterator[Event]:
    """The :class:`Delta` and :class:`Final` events of a stream of lines, as they come."""
    async for line in lines:
        for payload in data_lines([line]):
            for event in decode(payload):
                yield event
