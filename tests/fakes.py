"""Project fakes: a scripted TextBackend that needs no model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from edgecloud.backends import BackendInfo, TextBackend
from edgecloud.backends._base import FifoLock
from edgecloud.errors import BackendClosedError
from edgecloud.router import Route
from edgecloud.types import ChatMessage, Chunk, Finish, FinishReason, SamplingParams


class ScriptedBackend(TextBackend):
    """Yields the words of ``script`` as tokens with fixed signals; serializes like the real one."""

    def __init__(
        self,
        script: str = "one two three four five",
        *,
        step: threading.Event | None = None,
        delay: float = 0.0,
        follow_prefix: bool = False,
    ) -> None:
        self.words = script.split(" ")
        # Continue after as many words as a prefix has, as a model continues a text.
        self.follow_prefix = follow_prefix
        self.step = step  # when set, each token waits for the test to release it
        self.delay = delay  # seconds per token, to look like a real model
        self.finishes: list[FinishReason] = []
        self.prefixes: list[str] = []
        self.seen: list[tuple[str | Sequence[ChatMessage], SamplingParams]] = []
        self._lock = FifoLock()
        self.closed = False

    @property
    def info(self) -> BackendInfo:
        return BackendInfo("fake", "scripted", "", {})

    @property
    def n_ctx(self) -> int:
        return 128

    def count_tokens(self, prompt: str | Sequence[ChatMessage]) -> int:
        text = prompt if isinstance(prompt, str) else " ".join(m.content for m in prompt)
        return len(text.split())

    def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        prefix: str = "",
        use_adapter: bool = True,
    ) -> Iterator[Chunk | Finish]:
        if self.closed:
            raise BackendClosedError("closed")
        self.seen.append((prompt, params))
        self.prefixes.append(prefix)
        skip = len(prefix.split()) if self.follow_prefix else 0
        return self._run(params, cancel or threading.Event(), skip)

    def _run(
        self, params: SamplingParams, cancel: threading.Event, skip: int = 0
    ) -> Iterator[Chunk | Finish]:
        if not self._lock.acquire(cancel):
            yield Finish("cancelled", 3, 0)
            return
        try:
            reason: FinishReason = "length"
            n = 0
            words = self.words[skip:]
            for i, word in enumerate(words[: params.max_tokens], start=skip):
                if self.step is not None:
                    self.step.wait(5)
                if self.delay:
                    time.sleep(self.delay)
                if cancel.is_set():
                    reason = "cancelled"
                    break
                yield Chunk(("" if i == 0 else " ") + word, i + 10, -0.5 * (i + 1), 1.0, "local", n)
                n += 1
            else:
                reason = "stop" if len(words) <= params.max_tokens else "length"
            self.finishes.append(reason)
            yield Finish(reason, 3, n)
        finally:
            self._lock.release()

    def close(self) -> None:
        self.closed = True


async def answer(
    engine: Any,
    prompt: str = "Q: count to four\nA:",
    params: SamplingParams | None = None,
    route: Route | None = None,
) -> tuple[str, Finish]:
    """The text and the :class:`Finish` of one request through a ``HybridEngine``."""
    from edgecloud.device._hybrid import CancelScope

    params = params if params is not None else SamplingParams(max_tokens=4, stop=["\n"])
    text, finish = "", None
    async for ev in engine.stream(prompt, params, route=route, cancel=CancelScope()):
        if isinstance(ev, Chunk):
            text += ev.text
        else:
            finish = ev
    assert finish is not None
    return text, finish


def handing_off_device(port: int, log_dir: str, *, first_token_timeout_s: float) -> dict[str, Any]:
    """``device`` settings whose confidence window every answer trips after 3 tokens, so
    each answer is handed off to the cloud at ``127.0.0.1:port``."""
    return {
        "model": {"n_threads": 2, "n_ctx": 1024},
        "router": {"min_mean_logprob": -0.0001, "min_tokens": 3, "window": 3},
        "cloud": {"endpoints": [{"target": f"127.0.0.1:{port}", "tls": False}],
                  "first_token_timeout_s": first_token_timeout_s, "health_interval_s": 60},
        "log": {"path": f"{log_dir}/log.db"},
    }  # fmt: skip
