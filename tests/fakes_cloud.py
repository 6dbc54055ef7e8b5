"""A project fake of the cloud client: scripted answers and failures, records what it was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from edgecloud.errors import TransportError
from edgecloud.types import Chunk, Finish, Passage, SamplingParams


class FakeCloud:
    """``fail_after``: raise after that many tokens (0 = before the first); ``delay`` before
    the first token; ``healthy`` for the health probe."""

    def __init__(self, target: str, words: str = "cloud says hello", *, fail_after: int | None = None,
                 delay: float = 0.0, healthy: bool = True) -> None:  # fmt: skip
        self.target = target
        self.words = words.split()
        self.fail_after = fail_after
        self.delay = delay
        self.healthy = healthy
        self.calls: list[dict[str, Any]] = []
        self.uploaded: dict[str, Any] = {}

    async def stream(
        self, prompt: Any, params: SamplingParams | None = None, **kw: Any
    ) -> AsyncIterator[Chunk | Finish]:
        self.calls.append({"prompt": prompt, "params": params, **kw})
        if self.delay:
            await asyncio.sleep(self.delay)
        n = 0
        for i, w in enumerate(self.words[: params.max_tokens if params else None]):
            if self.fail_after is not None and i >= self.fail_after:
                raise TransportError(f"{self.target} went away")
            yield Chunk(" " + w, 100 + i, -0.1, 0.2, "cloud", i)
            n += 1
        if self.fail_after is not None and self.fail_after >= len(self.words):
            raise TransportError(f"{self.target} went away")
        yield Finish("stop", 7, n, passages=(Passage("fact", "manual.md", 0.9),))

    async def health(self, service: str = "", *, timeout_s: float = 5.0) -> bool:
        if not self.healthy:
            raise TransportError("unreachable")
        return True

    async def upload(self, records: Sequence[Any], timeout_s: float = 10.0) -> list[str]:
        for r in records:
            self.uploaded[r.id] = r
        return [r.id for r in records]

    async def close(self) -> None:
        pass
