"""What a connection reports while an answer streams, whichever way it runs.

The SDK in-process yields :class:`edgecloud.Chunk` objects and ends with a
:class:`edgecloud.GenerationResult`; a device's HTTP endpoint sends OpenAI chunks with
an ``edgecloud`` field. Both become the two small types here, so the transcript and the
widgets never care which one answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Delta:
    """Text to add to the answer.

    Attributes:
        text: the new text.
        source: where the token ran, ``local`` (the device) or ``cloud``.
        retracted: characters to drop from the end of the answer first (the cloud
            rejected that part of the device's text when it took over).
    """

    text: str
    source: str = "local"
    retracted: int = 0


@dataclass(frozen=True)
class Final:
    """How the answer ended and why it ran where it did.

    Attributes:
        source: ``local``, ``cloud`` or ``mixed`` (some tokens on each).
        finish: ``stop``, ``length`` or ``cancelled``.
        policy: the routing policy that decided (``None``: a device without a cloud).
        reason: the policy's reason, in words.
        escalated: whether the cloud was asked.
        endpoint: the cloud endpoint that answered.
        fallback: why the device finished an answer the cloud dropped.
    """

    source: str
    finish: str = "stop"
    policy: str | None = None
    reason: str | None = None
    escalated: bool = False
    endpoint: str | None = None
    fallback: str | None = None

    @classmethod
    def from_extension(cls, ext: Mapping[str, Any], finish: str | None = None) -> Final:
        """The last chunk's ``edgecloud`` field (docs/http.md); ``route`` is ``null`` on
        a device without cloud endpoints."""
        route = ext.get("route") or {}
        return cls(
            source=str(ext.get("source") or "local"),
            finish=str(ext.get("finish") or finish or "stop"),
            policy=_opt(route.get("policy")),
            reason=_opt(route.get("reason")),
            escalated=bool(route.get("escalated", False)),
            endpoint=_opt(route.get("endpoint")),
            fallback=_opt(route.get("fallback")),
        )

    @classmethod
    def from_result(cls, result: Any) -> Final:
        """An SDK ``GenerationResult`` (read by attribute: this module imports no edgecloud)."""
        route = result.route
        return cls(
            source=str(result.source),
            finish=str(result.finish_reason),
            policy=None if route is None else route.policy,
            reason=None if route is None else route.reason,
            escalated=False if route is None else bool(route.escalated),
            endpoint=None if route is None else route.endpoint,
            fallback=None if route is None else route.fallback,
        )


Event = Delta | Final


def _opt(value: object) -> str | None:
    return None if value is None else str(value)
