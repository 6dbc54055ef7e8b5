"""The cost model and the cut choice: pure functions of measurements.

End-to-end latency of a cut is ``head_s + rtt + up_bytes/bw + tail_s +
down_bytes/bw`` (``head_s`` alone for all-device, which sends nothing). The
link estimate is a moving average of real transfers, so the choice follows the
link as it changes. No clock is read here; callers pass what they measured.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edgecloud.split._partition import Cut

__all__ = [
    "CutCost",
    "CutProfile",
    "LinkEstimate",
    "LinkEstimator",
    "PowerModel",
    "choose_cut",
    "predict",
]

Objective = Literal["latency", "energy"]


@dataclass(frozen=True)
class LinkEstimate:
    """Round-trip time (seconds) and one-way bandwidth (bytes per second)."""

    rtt_s: float
    bandwidth_Bps: float

    def transfer_s(self, up_bytes: int, down_bytes: int) -> float:
        """Seconds for one request/response exchange of those sizes."""
        return self.rtt_s + (up_bytes + down_bytes) / self.bandwidth_Bps


class LinkEstimator:
    """Exponentially weighted estimates of RTT and bandwidth from real transfers.

    A transfer's wire time is ``rtt + bytes / bandwidth``. Small transfers
    (pings) measure the RTT; large ones, with the current RTT subtracted,
    measure the bandwidth. A transfer whose serialization is under
    ``min_serial_fraction`` of its time only updates the RTT: its remainder is
    mostly per-call overhead (framing, scheduling), and dividing bytes by it
    would underestimate the bandwidth (on loopback at 1 Mbit/s, 2 kB
    activations read as 0.6 Mbit/s).

    Bandwidth samples first go through a median of the last three, so one
    call slowed by a scheduling hiccup (a small payload that took 40 ms reads
    as 0.1 Mbit/s) changes nothing, while a real change shows after two
    transfers. The filtered value is averaged in log space, so a 10x drop and
    a 10x rise are followed equally fast; one more than ``jump_factor`` away
    from the estimate is taken as a change of link (Wi-Fi to LTE), not noise,
    and weighs ``jump_alpha``, so the cut follows a new link within two or
    three transfers instead of a dozen.

    Args:
        alpha: weight of the newest sample (1 = forget the past at once).
        rtt_s: initial RTT guess.
        bandwidth_Bps: initial bandwidth guess.
        min_serial_fraction: see above.
        jump_factor, jump_alpha: see above.
    """

    def __init__(
        self,
        alpha: float = 0.3,
        rtt_s: float = 0.05,
        bandwidth_Bps: float = 1e6,
        min_serial_fraction: float = 0.5,
        jump_factor: float = 3.0,
        jump_alpha: float = 0.9,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.min_serial_fraction = min_serial_fraction
        self.jump_factor = jump_factor
        self.jump_alpha = jump_alpha
        self._recent: deque[float] = deque(maxlen=3)
        self._rtt = rtt_s
        self._bw = bandwidth_Bps
        self.rtt_samples = 0
        self.bandwidth_samples = 0

    @property
    def estimate(self) -> LinkEstimate:
        return LinkEstimate(self._rtt, self._bw)

    def observe_rtt(self, seconds: float) -> None:
        """A round trip that carried (almost) no payload."""
        if seconds > 0:
            # the first measurement replaces the guess instead of averaging with it
            weight = self.alpha if self.rtt_samples else 1.0
            self._rtt += weight * (seconds - self._rtt)
            self.rtt_samples += 1

    def informative(self, seconds: float) -> bool:
        """Whether a transfer that took ``seconds`` says something about bandwidth."""
        return seconds - self._rtt >= self.min_serial_fraction * seconds

    def observe_transfer(self, nbytes: int, seconds: float) -> None:
        """A round trip that moved ``nbytes`` in total (both ways) in ``seconds`` of wire time."""
        if seconds <= 0 or nbytes <= 0:
            return
        serial = seconds - self._rtt
        if not self.informative(seconds):
            # dominated by latency: tells us the RTT is at most this
            self.observe_rtt(min(seconds, self._rtt))
            return
        self._recent.append(nbytes / serial)
        sample = (
            sorted(self._recent)[len(self._recent) // 2]
            if len(self._recent) == 3
            else (self._recent[-1])
        )
        ratio = math.log(sample / self._bw)
        if not self.bandwidth_samples:
            weight = 1.0
        elif abs(ratio) > math.log(self.jump_factor):
            weight = self.jump_alpha
        else:
            weight = self.alpha
        self._bw *= math.exp(weight * ratio)
        self.bandwidth_samples += 1


@dataclass(frozen=True)
class PowerModel:
    """Device power draw in watts while computing, using the radio, and waiting."""

    compute_w: float = 3.0
    radio_w: float = 1.5
    idle_w: float = 0.3


@dataclass(frozen=True)
class CutProfile:
    """What one cut costs, measured: device head time, cloud tail time, bytes each way."""

    cut: Cut
    head_s: float
    tail_s: float
    up_bytes: int
    down_bytes: int
    local: bool = False
    """True for the all-device cut: nothing is sent."""


@dataclass(frozen=True)
class CutCost:
    """Predicted latency (s) and device energy (J) of a cut under a link estimate."""

    profile: CutProfile
    latency_s: float
    energy_j: float


def predict(p: CutProfile, link: LinkEstimate, power: PowerModel) -> CutCost:
    """Latency and device energy of one cut."""
    if p.local:
        return CutCost(p, p.head_s, p.head_s * power.compute_w)
    serial = (p.up_bytes + p.down_bytes) / link.bandwidth_Bps
    latency = p.head_s + link.rtt_s + serial + p.tail_s
    energy = (
        p.head_s * power.compute_w + serial * power.radio_w + (link.rtt_s + p.tail_s) * power.idle_w
    )
    return CutCost(p, latency, energy)


def choose_cut(
    profiles: Sequence[CutProfile],
    link: LinkEstimate,
    *,
    objective: Objective = "latency",
    power: PowerModel | None = None,
    cloud_available: bool = True,
) -> tuple[CutCost, list[CutCost]]:
    """The cut with the lowest predicted cost, and every cut's prediction.

    With ``cloud_available=False`` only the all-device cut is a candidate.

    Raises:
        ValueError: no candidate (empty profiles, or no local cut without a cloud).
    """
    pm = power or PowerModel()
    costs = [predict(p, link, pm) for p in profiles]
    candidates = [c for c in costs if cloud_available or c.profile.local]
    if not candidates:
        raise ValueError("no candidate cut")
    key = (lambda c: c.latency_s) if objective == "latency" else (lambda c: c.energy_j)
    return min(candidates, key=key), costs
