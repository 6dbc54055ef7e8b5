"""Cloud endpoints as the device sees them: health, circuit breakers, failover order."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from edgecloud.common.records import EscalationRecord
    from edgecloud.types import ChatMessage, Chunk, Finish, Retraction, SamplingParams

__all__ = ["CircuitBreaker", "Endpoint", "EndpointClient", "EndpointPool"]

log = logging.getLogger("edgecloud.device.endpoints")

BreakerState = Literal["closed", "open", "half-open"]


class EndpointClient(Protocol):
    """What the device calls on one cloud endpoint.

    :class:`~edgecloud.transport.CloudClient` (gRPC to an edgecloud service) is
    one; every method raises errors of the edgecloud tree (a
    :class:`~edgecloud.errors.TransportError` when the endpoint cannot be reached),
    which the pool and the hybrid engine count against the endpoint's breaker.
    """

    @property
    def target(self) -> str:
        """Where the endpoint is (``host:port``), for logs and ``RouteInfo.endpoint``."""
        ...

    def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        *,
        timeout_s: float | None = None,
        assistant_prefix: str = "",
        verify_prefix: bool = False,
        prefix_logprobs: Sequence[float] = (),
    ) -> AsyncIterator[Chunk | Finish | Retraction]:
        """Chunks of the answer (``source="cloud"``, with logprob and entropy), then one
        :class:`~edgecloud.types.Finish` (with the passages the answer used).

        ``assistant_prefix`` is the answer so far (a mid-answer hand-off): the
        endpoint continues after it and streams only what follows. With
        ``verify_prefix`` it first scores the prefix under its own model and keeps the
        longest part it agrees with (greedy agreement; with sampling, the
        probability-ratio rule when ``prefix_logprobs`` holds the device's logprob of
        each prefix token); when it rejects part, a
        :class:`~edgecloud.types.Retraction` comes before the first chunk, and the
        chunks continue after the kept text. ``timeout_s`` bounds the whole stream.
        """
        ...

    async def upload(self, records: Sequence[EscalationRecord]) -> list[str]:
        """Store escalation records there; returns the ids stored (safe to repeat)."""
        ...

    async def health(self, *, timeout_s: float) -> bool:
        """Whether the endpoint serves now."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


@dataclass
class CircuitBreaker:
    """Stops calling an endpoint after ``failures`` failures in a row; after
    ``cooldown_s`` one trial call is let through (half-open), and its outcome
    closes or re-opens the breaker. Pure: the caller passes the time."""

    failures: int = 3
    cooldown_s: float = 30.0
    _count: int = 0
    _opened_at: float | None = None
    _trial: bool = False

    def state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        return "half-open" if now - self._opened_at >= self.cooldown_s else "open"

    def allow(self, now: float) -> bool:
        """Whether a call may go out now (claims the single half-open trial)."""
        s = self.state(now)
        if s == "closed":
            return True
        if s == "half-open" and not self._trial:
            self._trial = True
            return True
        return False

    def record_success(self) -> None:
        self._count = 0
        self._opened_at = None
        self._trial = False

    def record_failure(self, now: float) -> None:
        self._count += 1
        self._trial = False
        if self._opened_at is not None or self._count >= self.failures:
            self._opened_at = now


class Endpoint:
    """One cloud service: its client, breaker and last health probe."""

    def __init__(self, client: EndpointClient, breaker: CircuitBreaker) -> None:
        self.client = client
        self.breaker = breaker
        self.healthy: bool | None = None  # None: not probed yet
        self.verifies = _takes_verify_prefix(client)
        """Whether the client can ask for a verified prefix (``verify_prefix``)."""

    @property
    def target(self) -> str:
        return self.client.target


class EndpointPool:
    """Several cloud endpoints in order of preference.

    ``available()`` lists those worth trying now: breaker not open and last health
    probe not failed. ``probe()`` runs the standard gRPC health check on each.
    Endpoints found on the LAN come after the configured ones (:meth:`set_discovered`).
    """

    def __init__(self, endpoints: Sequence[Endpoint], *, health_timeout_s: float = 2.0) -> None:
        self.endpoints = list(endpoints)
        self.configured = tuple(endpoints)
        """The endpoints from settings: they always rank first."""
        self._health_timeout = health_timeout_s

    def set_discovered(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the discovered endpoints (best first), kept after the configured ones.

        The list is swapped whole, so a request iterating the old one is not disturbed.
        """
        self.endpoints = [*self.configured, *endpoints]

    def available(self, now: float | None = None) -> list[Endpoint]:
        now = time.monotonic() if now is None else now
        return [
            e for e in self.endpoints if e.healthy is not False and e.breaker.state(now) != "open"
        ]

    async def probe(self) -> int:
        """Health-check every endpoint; returns how many are serving."""
        from edgecloud.errors import EdgeCloudError

        async def one(e: Endpoint) -> None:
            try:
                e.healthy = await e.client.health(timeout_s=self._health_timeout)
            except EdgeCloudError as exc:
                log.info("cloud endpoint %s unhealthy: %s", e.target, exc)
                e.healthy = False
            now = time.monotonic()
            if e.healthy:
                e.breaker.record_success()
            else:
                e.breaker.record_failure(now)

        await asyncio.gather(*(one(e) for e in self.endpoints))
        return sum(bool(e.healthy) for e in self.endpoints)

    async def close(self) -> None:
        await asyncio.gather(*(e.client.close() for e in self.endpoints))


def _takes_verify_prefix(client: EndpointClient) -> bool:
    """Whether ``client.stream`` names a ``verify_prefix`` parameter.

    A client written before prefix verification lacks it (and may pass unknown keywords
    on as sampling overrides); the device then asks it to continue the prefix as it is.
    """
    try:
        return "verify_prefix" in inspect.signature(client.stream).parameters
    except (TypeError, ValueError):  # no signature to read: assume the old protocol
        return False
