"""Escalation policies: pure functions of signals to a routing decision.

A policy looks only at the :class:`RequestSignals` it is given (no I/O, no clock:
the caller measures usage, health and time and passes the numbers in) and
returns a :class:`Decision`, or ``None`` for "no opinion". :func:`route_request`
asks the policies in order; the first decision wins, and it carries the name of
the policy that fired, a human-readable reason and the signals it used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    from edgecloud.router._privacy import PrivacyDetectors

__all__ = [
    "DEFAULT_PRIVACY_PATTERNS",
    "BudgetPolicy",
    "ConnectivityPolicy",
    "ContextLengthPolicy",
    "Decision",
    "ForcedRoutePolicy",
    "LearnedRouterPolicy",
    "Policy",
    "PrivacyPolicy",
    "RequestSignals",
    "Route",
    "route_request",
]

Route: TypeAlias = Literal["local", "cloud"]
SignalValue: TypeAlias = float | int | str | bool


@dataclass(frozen=True, slots=True)
class RequestSignals:
    """What is known about a request before generation starts."""

    prompt_text: str
    prompt_tokens: int
    local_context: int
    forced: Route | None = None
    healthy_endpoints: int = 0
    cloud_tokens_last_hour: int = 0
    cloud_tokens_last_day: int = 0
    predicted_poor: float | None = None
    """Learned router's probability that the local answer will be poor, if computed."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Where to run, and why."""

    route: Route
    policy: str
    reason: str
    private: bool = False
    """The request must never leave the device (nor its log record)."""
    signals: Mapping[str, SignalValue] = field(default_factory=dict)


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def decide(self, s: RequestSignals) -> Decision | None: ...


@dataclass(frozen=True, slots=True)
class ForcedRoutePolicy:
    """The request names its route (``route="local"`` or ``"cloud"``)."""

    name: str = "forced"

    def decide(self, s: RequestSignals) -> Decision | None:
        if s.forced is None:
            return None
        return Decision(
            s.forced, self.name, f"the request asked for {s.forced}", signals={"forced": s.forced}
        )


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


DEFAULT_PRIVACY_PATTERNS: Mapping[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    # Not part of a longer run of digit groups (an order or card number is not a phone).
    "phone": (
        r"(?<!\w)(?<!\d[\s.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?"
        r"\d{3,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?(?![\s.-]?\d)(?!\w)"
    ),
    "phone_intl": r"(?<!\w)\+\d{1,3}(?:[\s.-]?\d{1,4}){2,5}(?![\s.-]?\d)",
    "card": r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)",
    "us_ssn": r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
}
"""Built-in patterns; card numbers must also pass the Luhn check to count."""


class PrivacyPolicy:
    """Keeps requests that contain personal data or secrets on the device, and marks them
    private.

    Args:
        patterns: name → regular expression; defaults to :data:`DEFAULT_PRIVACY_PATTERNS`.
        detectors: maintained detectors of secrets and more personal data (API keys,
            passwords, IP and street addresses, dates of birth) run after the patterns;
            None = the patterns only. The device builds them from ``device.router``.
    """

    name = "privacy"

    def __init__(
        self,
        patterns: Mapping[str, str] | None = None,
        detectors: PrivacyDetectors | None = None,
    ) -> None:
        self._patterns = {
            k: re.compile(v) for k, v in (patterns or DEFAULT_PRIVACY_PATTERNS).items()
        }
        self.detectors = detectors

    def matches(self, text: str) -> list[str]:
        """Names of the patterns (then the detectors' kinds) found in ``text``."""
        found = []
        for kind, rx in self._patterns.items():
            for m in rx.finditer(text):
                if kind == "card" and not _luhn_ok(re.sub(r"\D", "", m.group())):
                    continue
                found.append(kind)
                break
        if self.detectors is not None:
            found.extend(k for k in self.detectors.matches(text) if k not in found)
        return found

    def decide(self, s: RequestSignals) -> Decision | None:
        kinds = self.matches(s.prompt_text)
        if not kinds:
            return None
        return Decision(
            "local", self.name, f"the prompt contains private data ({', '.join(kinds)})",
            private=True, signals={"kinds": ",".join(kinds)},
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ConnectivityPolicy:
    """No healthy cloud endpoint: stay local."""

    name: str = "connectivity"

    def decide(self, s: RequestSignals) -> Decision | None:
        if s.healthy_endpoints > 0:
            return None
        return Decision(
            "local", self.name, "no healthy cloud endpoint", signals={"healthy_endpoints": 0}
        )


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Cloud token budget per device, per hour and per day (0 = unlimited)."""

    tokens_per_hour: int = 0
    tokens_per_day: int = 0
    name: str = "budget"

    def decide(self, s: RequestSignals) -> Decision | None:
        for used, cap, span in (
            (s.cloud_tokens_last_hour, self.tokens_per_hour, "hour"),
            (s.cloud_tokens_last_day, self.tokens_per_day, "day"),
        ):
            if cap and used >= cap:
                return Decision(
                    "local", self.name, f"cloud budget spent: {used} of {cap} tokens this {span}",
                    signals={"used": used, "budget": cap, "span": span},
                )  # fmt: skip
        return None


@dataclass(frozen=True, slots=True)
class ContextLengthPolicy:
    """The prompt (plus room to answer) does not fit the local context: go to the cloud."""

    reserve_tokens: int = 16
    name: str = "context"

    def decide(self, s: RequestSignals) -> Decision | None:
        if s.prompt_tokens + self.reserve_tokens <= s.local_context:
            return None
        reason = (
            f"prompt of {s.prompt_tokens} tokens exceeds the local context of {s.local_context}"
        )
        return Decision(
            "cloud", self.name, reason,
            signals={"prompt_tokens": s.prompt_tokens, "local_context": s.local_context},
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class LearnedRouterPolicy:
    """Escalate before generating when the learned router predicts a poor local answer."""

    threshold: float = 0.5
    name: str = "learned"

    def decide(self, s: RequestSignals) -> Decision | None:
        if s.predicted_poor is None or s.predicted_poor < self.threshold:
            return None
        return Decision(
            "cloud", self.name,
            f"predicted poor local answer (p={s.predicted_poor:.2f} >= {self.threshold:.2f})",
            signals={"predicted_poor": s.predicted_poor, "threshold": self.threshold},
        )  # fmt: skip


def route_request(policies: Sequence[Policy], s: RequestSignals) -> Decision:
    """The first policy with an opinion decides; with none, the device answers.

    A private request is never routed to the cloud, even if a later policy or the
    request itself asks for it: privacy is checked first, whatever the order given.
    """
    private = next((p for p in policies if isinstance(p, PrivacyPolicy)), None)
    if private is not None and (d := private.decide(s)) is not None:
        return d
    for policy in policies:
        if policy is private:
            continue
        decision = policy.decide(s)
        if decision is not None:
            return decision
    return Decision("local", "default", "no policy asked for the cloud")
