"""One request's metrics and request id on the device, around the hybrid engine's stream.

:func:`observed` wraps the stream of one :meth:`HybridEngine.stream` call. While the
engine works on the request (each step of its stream, and its closing), the request's
id is bound (:func:`edgecloud.common.logs.bind_request_id`): the engine's log lines,
the cloud calls it makes (``x-request-id``) and the records it writes carry it. While
the app handles a chunk, it is not bound: the app may interleave requests.

Per token it times the gap since the last one (:class:`~edgecloud.common.metrics.TokenClock`)
and counts by source; the counters move once, when the request ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator

from edgecloud.common.logs import bind_request_id
from edgecloud.common.metrics import TokenClock, metrics
from edgecloud.types import Chunk, Finish, RouteInfo

__all__ = ["observed", "observed_local"]

log = logging.getLogger("edgecloud.device.requests")


class _Tally:
    """One request's tokens by source, its finish and its outcome, counted at :meth:`end`."""

    __slots__ = ("clock", "finish", "tokens")

    def __init__(self) -> None:
        self.clock = TokenClock("device")
        self.tokens = {"local": 0, "cloud": 0}
        self.finish: Finish | None = None

    def see(self, ev: Chunk | Finish) -> None:
        if isinstance(ev, Chunk):
            if ev.token_id >= 0:
                self.clock.tick()
                self.tokens[ev.source] += 1
        else:
            self.finish = ev

    def outcome(self) -> str:
        return self.finish.reason if self.finish is not None else "cancelled"

    def end(self, outcome: str, *, has_cloud: bool, forced: str) -> None:
        route = self.finish.route if self.finish is not None else None
        _count(route, outcome, self.tokens, has_cloud, forced)


async def observed(
    events: AsyncGenerator[Chunk | Finish, None],
    request_id: str,
    *,
    has_cloud: bool,
    forced: str | None = None,
) -> AsyncGenerator[Chunk | Finish, None]:
    """``events``, with ``request_id`` bound while they are produced, timed and counted.

    Args:
        events: the engine's stream of one request.
        request_id: the request's id.
        has_cloud: the device has cloud endpoints configured (an offline device's
            local answers are not counted as fallbacks).
        forced: the route the request demanded: its ``route`` label should it end
            before any token and without a :class:`Finish` (None: ``local``).
    """
    tally = _Tally()
    outcome = "error"
    try:
        while True:
            with bind_request_id(request_id):
                try:
                    ev = await anext(events)
                except StopAsyncIteration:
                    break
            tally.see(ev)
            yield ev
        outcome = tally.outcome()
    except GeneratorExit:
        outcome = "cancelled"  # the app stopped reading
        raise
    finally:
        with bind_request_id(request_id):
            await events.aclose()
            tally.end(outcome, has_cloud=has_cloud, forced=forced or "local")


def observed_local(events: Iterator[Chunk | Finish]) -> Iterator[Chunk | Finish]:
    """``events`` of a device without the hybrid engine (no cloud configured), counted
    as :func:`observed` counts the engine's: the same requests, tokens and latencies."""
    tally = _Tally()
    outcome = "error"
    try:
        for ev in events:
            tally.see(ev)
            yield ev
        outcome = tally.outcome()
    except GeneratorExit:
        outcome = "cancelled"
        raise
    finally:
        tally.end(outcome, has_cloud=False, forced="local")


def _count(
    route: RouteInfo | None, outcome: str, tokens: dict[str, int], has_cloud: bool, forced: str
) -> None:
    m = metrics()
    local, cloud = tokens["local"], tokens["cloud"]
    escalated = route is not None and route.escalated
    if local or cloud:  # where the answer's tokens came from
        where = "mixed" if local and cloud else "cloud" if cloud else "local"
    else:  # no token: where it was headed
        where = forced if route is None else "cloud" if escalated else "local"
    m.requests.labels("device", where, outcome).inc()
    if local:
        m.tokens.labels("device", "local").inc(local)
    if cloud:
        m.tokens.labels("device", "cloud").inc(cloud)
    if route is not None:
        if escalated:
            m.escalations.labels(route.policy).inc()
            if route.local_tokens_before_handoff + route.rejected_local_tokens > 0:
                m.handoffs.inc()
        if route.fallback:
            m.fallbacks.inc()
        elif route.policy == "connectivity" and has_cloud:
            m.fallbacks.inc()  # the cloud was out of reach: answered here instead
    policy = route.policy if route is not None else None
    log.info(
        "request answered: %s, %s, policy %s, %d local + %d cloud tokens",
        where, outcome, policy or "-", local, cloud,
        extra={"route": where, "finish": outcome, "escalated": escalated, "policy": policy,
               "local_tokens": local, "cloud_tokens": cloud,
               "fallback": route.fallback if route is not None else None},
    )  # fmt: skip
