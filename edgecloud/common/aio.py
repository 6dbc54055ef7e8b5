"""Moving events between threads and event loops (kept free of heavy imports)."""

from __future__ import annotations

import asyncio
import contextlib
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

    def close(self, grace_s: float = 2.0) -> None:
        """Finish what still runs on the loop, then stop and close it.

        A cancelled gRPC stream keeps grpc's ``_handle_status_once_received`` task
        pending until grpc's poller thread hands the call's status back to the loop, a
        moment after the channel closed. Stopped before that, the loop would leave the
        task pending, to be destroyed later with "Task was destroyed but it is
        pending!". So, as :func:`asyncio.run` does, the tasks left get ``grace_s`` to
        end, the rest are cancelled and awaited, and async generators are closed.
        """
        if self.loop.is_closed():
            return
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            # closing goes on whatever happens; what is left is logged then
            with contextlib.suppress(Exception):
                self.run(_finish_tasks(grace_s), timeout=2 * grace_s + 1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def _finish_tasks(grace_s: float) -> None:
    """Let the loop's other tasks end within ``grace_s``, then cancel and await the rest."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    if tasks:
        _, left = await asyncio.wait(tasks, timeout=grace_s)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=grace_s)
    await asyncio.get_running_loop().shutdown_asyncgens()


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
