"""Ranking of discovered services: pure, so the order is easy to test and to explain.

A service is worth its measured round trip (the health check's, which includes the
service's own scheduling) plus a penalty for the load it advertises. The load is a
claim: a service that lies about it only moves itself in this order, and the round
trip the device measures itself keeps a lie from paying off much.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Rankable", "rank", "score"]


class Rankable(Protocol):
    """What ranking reads of a discovered service."""

    @property
    def name(self) -> str: ...

    @property
    def rtt_s(self) -> float | None:
        """Last measured health round trip; None: not measured or failed."""
        ...

    @property
    def load(self) -> float | None:
        """Advertised load (1.0: every running slot busy); None: not said."""
        ...

    @property
    def healthy(self) -> bool | None:
        """Last health verdict; None: not probed yet."""
        ...


R = TypeVar("R", bound=Rankable)


def score(item: Rankable, *, load_weight_ms: float) -> float:
    """Milliseconds: round trip plus ``load_weight_ms`` per unit of advertised load
    (infinite when the round trip is unknown)."""
    if item.rtt_s is None:
        return float("inf")
    return item.rtt_s * 1000.0 + load_weight_ms * (item.load or 0.0)


def rank(items: Sequence[R], *, load_weight_ms: float) -> list[R]:
    """Best first: healthy before unprobed before failed, then by :func:`score`, then by
    name (a stable order among equals)."""

    def key(item: R) -> tuple[int, float, str]:
        state = 0 if item.healthy else (1 if item.healthy is None else 2)
        return state, score(item, load_weight_ms=load_weight_ms), item.name

    return sorted(items, key=key)
