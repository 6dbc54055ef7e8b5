"""Moving events between threads and event loops (kept free of heavy imports)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["DONE", "LoopThread", "iterate_async", "pump_events"]

T = TypeVar("T")

DONE = object()
"""Sentinel a pump puts on the queue after the last event."""


def pump_events(
    events: Any,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[object],
    cancel: threading.Event,
) -> None:
    """Worker thread: run a blocking backend iterator, hand each event to ``loop``.

    An exception is handed over as an item; :data:`DONE` always ends the stream.
    """

    def put(item: object) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
            return True
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False

    try:
        for event in events:
            if not put(event):
                cancel.set()  # run the backend to its end so it frees the model
    except BaseException as exc:  # noqa: BLE001 - handed to the consuming task
        put(exc)
    finally:
        put(DONE)


class LoopThread:
    """A private asyncio loop in a daemon thread, for the sync facade's async inside."""

    def __init__(self, name: str = "edgecloud-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def _anext(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()


def iterate_async(agen: AsyncIterator[T], runner: LoopThread) -> Iterator[T]:
    """Iterate an async iterator that lives on ``runner``'s loop, from a sync caller."""
    try:
        while True:
            try:
                item: T = runner.run(_anext(agen))
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None and not runner.loop.is_closed():
            runner.run(aclose())
