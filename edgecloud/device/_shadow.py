"""The bookkeeping of shadow checks: sampling, the cap on checks in flight, their tasks,
and what they found per adapter version.

A shadow check asks the cloud, in the background, what the device answered confidently
(``device.shadow``). The engine decides which answers qualify and runs each check
(:meth:`edgecloud.device._hybrid.HybridEngine.stream`); this module keeps the state
those checks share, so the engine's request path stays as it was.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from edgecloud.device._settings import DeviceShadowConfig

__all__ = ["ShadowChecks", "ShadowStats"]


@dataclass(frozen=True, slots=True)
class ShadowStats:
    """What the shadow checks of one model version's confident answers found."""

    checked: int = 0
    """Confident answers the cloud answered too."""
    disagreed: int = 0
    """Of those, answers the cloud's did not agree with (the device was confidently wrong,
    as far as the cloud can tell)."""

    @property
    def rate(self) -> float:
        """The confidently-wrong rate: ``disagreed / checked`` (0.0 before any check)."""
        return self.disagreed / self.checked if self.checked else 0.0


class ShadowChecks:
    """The shadow checks of one engine (see module doc).

    Args:
        config: ``device.shadow``.
        seed: seeds the sampling (tests); None: unseeded.
    """

    def __init__(self, config: DeviceShadowConfig, seed: int | None = None) -> None:
        self.config = config
        # Its own generator: replay sampling draws from another, so the two are independent.
        self._rng = random.Random(None if seed is None else f"shadow:{seed}")
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts: dict[int | None, ShadowStats] = {}

    def sample(self) -> bool:
        """Whether to check the confident answer at hand (with probability ``rate``)."""
        return self.config.rate > 0 and self._rng.random() < self.config.rate

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def full(self) -> bool:
        """Whether ``max_in_flight`` checks run: another one is skipped, not queued."""
        return len(self._tasks) >= self.config.max_in_flight

    def start(self, check: Coroutine[Any, Any, None]) -> None:
        """Run ``check`` as a task of the running loop, tracked until it ends."""
        task = asyncio.get_running_loop().create_task(check, name="edgecloud-shadow")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def count(self, version: int | None, agree: bool) -> None:
        """Count a check of an answer ``version`` gave (None: the base model)."""
        old = self._counts.get(version, ShadowStats())
        self._counts[version] = ShadowStats(old.checked + 1, old.disagreed + (not agree))

    def stats(self) -> dict[int | None, ShadowStats]:
        """The counts per version so far (a copy)."""
        return dict(self._counts)

    async def wait(self) -> None:
        """Return once the checks in flight now have ended."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Cancel the checks in flight and wait until they are gone."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
