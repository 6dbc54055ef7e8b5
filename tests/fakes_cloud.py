"""Project fakes of the cloud: an endpoint client (what the device calls) and an engine
(what the inference service serves), both scripted; each records what it was sent. And a
character tokenizer, for the training code's bookkeeping around a scripted sampler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from edgecloud.cloud import BackendInfo, CloudRequest, LoadSnapshot
from edgecloud.common.chat import render_plain
from edgecloud.errors import TransportError, UnknownAdapterError
from edgecloud.types import Chunk, Finish, FinishReason, Passage, Retraction, SamplingParams


class FakeCloud:
    """``fail_after``: raise after that many tokens (0 = before the first event);
    ``fail_after_retraction``: raise where a verdict is given (after the retraction, if
    there is one); ``fail_from_call``: raise
    before the first event of that call (1 = the first) and every later one; ``delay``
    before the first event; ``healthy`` for the health probe.

    Without ``answer`` it streams ``words`` (each as " word") after any prefix, and with
    ``verify_prefix`` keeps all of the prefix. With ``answer``, that is its own greedy
    answer, in tokens split at spaces as :class:`tests.fakes.ScriptedBackend` splits its
    script: asked to verify a prefix, it keeps the longest run of whole tokens the prefix
    starts with, sends a :class:`Retraction` when that is not all of it, and continues its
    answer after the kept tokens; asked to continue blindly, it continues after as many
    tokens as the prefix has words.
    """

    def __init__(self, target: str, words: str = "cloud says hello", *, answer: str | None = None,
                 fail_after: int | None = None, fail_after_retraction: bool = False,
                 fail_from_call: int | None = None, delay: float = 0.0,
                 healthy: bool = True) -> None:  # fmt: skip
        self.target = target
        self.words = words.split()
        self.answer = answer
        self.fail_after = fail_after
        self.fail_after_retraction = fail_after_retraction
        self.fail_from_call = fail_from_call
        self.delay = delay
        self.healthy = healthy
        self.calls: list[dict[str, Any]] = []
        self.uploaded: dict[str, Any] = {}
        self.closes = 0

    async def stream(
        self,
        prompt: Any,
        params: SamplingParams | None = None,
        *,
        timeout_s: float | None = None,
        assistant_prefix: str = "",
        verify_prefix: bool = False,
        prefix_logprobs: Sequence[float] = (),
    ) -> AsyncIterator[Chunk | Finish | Retraction]:
        self.calls.append({"prompt": prompt, "params": params, "timeout_s": timeout_s,
                           "assistant_prefix": assistant_prefix, "verify_prefix": verify_prefix,
                           "prefix_logprobs": list(prefix_logprobs)})  # fmt: skip
        if self.delay:
            await asyncio.sleep(self.delay)
        late = self.fail_from_call is not None and len(self.calls) >= self.fail_from_call
        if self.fail_after == 0 or late:
            raise TransportError(f"{self.target} went away")
        if self.answer is None:
            rest = [" " + w for w in self.words]
        else:
            own = [("" if i == 0 else " ") + w for i, w in enumerate(self.answer.split(" "))]
            done = len(assistant_prefix.split()) if assistant_prefix else 0
            if verify_prefix:
                done, kept = 0, 0
                while done < len(own) and assistant_prefix.startswith(own[done], kept):
                    kept += len(own[done])
                    done += 1
                if kept < len(assistant_prefix):
                    yield Retraction(kept, assistant_prefix[kept:], done)
                if self.fail_after_retraction:
                    raise TransportError(f"{self.target} went away after its verdict")
            rest = own[done:]
        limit = params.max_tokens if params else len(rest)
        n = 0
        for i, text in enumerate(rest[:limit]):
            if self.fail_after is not None and i >= self.fail_after:
                raise TransportError(f"{self.target} went away")
            yield Chunk(text, 100 + i, -0.1, 0.2, "cloud", i)
            n += 1
        if self.fail_after is not None and self.fail_after >= len(rest):
            raise TransportError(f"{self.target} went away")
        reason: FinishReason = "stop" if len(rest) <= limit else "length"
        yield Finish(reason, 7, n, passages=(Passage("fact", "manual.md", 0.9),))

    async def health(self, service: str = "", *, timeout_s: float = 5.0) -> bool:
        if not self.healthy:
            raise TransportError("unreachable")
        return True

    async def upload(self, records: Sequence[Any], *, timeout_s: float | None = None) -> list[str]:
        for r in records:
            self.uploaded[r.id] = r
        return [r.id for r in records]

    async def close(self) -> None:
        self.closes += 1


class ScriptedEngine:
    """A :class:`~edgecloud.cloud.CloudBackend` that answers every prompt with ``answer``.

    Token i of the answer has logprob ``-0.1 * (i + 1)`` and entropy ``0.5 + i``; with an
    ``assistant_prefix`` that starts the answer it continues after it, as a model would.
    With ``verify_prefix`` (a word is a token) it keeps the prefix's words that agree with
    the answer, retracts the rest and continues after the kept words.
    The prompt it "saw" (passages put in front) is kept in ``prompts``; ``gate``, when set,
    holds every token until the test releases it.
    """

    def __init__(self, answer: str = "the engine answers slowly", *,
                 adapters: Sequence[str] = (), max_running: int = 4,
                 gate: asyncio.Event | None = None) -> None:  # fmt: skip
        self.words = answer.split(" ")
        self._adapters = tuple(adapters)
        self._max_running = max_running
        self.gate = gate
        self.requests: list[CloudRequest] = []
        self.prompts: list[str] = []
        self.running = 0
        self.cancelled = 0
        self.closed = False

    @property
    def info(self) -> BackendInfo:
        return BackendInfo("scripted", "scripted-cloud", self._adapters, "nowhere", "none")

    def load_snapshot(self) -> LoadSnapshot:
        return LoadSnapshot(self.running, 0, self._max_running, 0)

    async def generate(
        self, request: CloudRequest
    ) -> AsyncGenerator[Chunk | Finish | Retraction, None]:
        if request.adapter_id is not None and request.adapter_id not in self._adapters:
            raise UnknownAdapterError(f"adapter {request.adapter_id!r} is not loaded")
        self.requests.append(request)
        text = request.prompt if isinstance(request.prompt, str) else render_plain(request.prompt)
        context = "".join(f"[{p.source}] {p.text}\n" for p in request.passages)
        self.prompts.append(context + text)
        done = len(request.assistant_prefix.split()) if request.assistant_prefix else 0
        if request.verify_prefix and request.assistant_prefix:
            said = request.assistant_prefix.split(" ")
            agreed = [a == b for a, b in zip(said, self.words, strict=False)]
            kept = agreed.index(False) if False in agreed else min(len(said), len(self.words))
            if kept < len(said):
                chars = len(" ".join(said[:kept]))
                yield Retraction(chars, request.assistant_prefix[chars:], kept)
            done = kept
        rest = self.words[done:]
        self.running += 1
        n = 0
        try:
            for i, word in enumerate(rest[: request.params.max_tokens]):
                if self.gate is not None:
                    await self.gate.wait()
                yield Chunk((" " if done + i else "") + word, 100 + done + i,
                            -0.1 * (done + i + 1), 0.5 + done + i, "cloud", i)  # fmt: skip
                n += 1
            reason: FinishReason = "stop" if len(rest) <= request.params.max_tokens else "length"
            prompt_tokens = len((context + text).split()) + done
            yield Finish(reason, prompt_tokens, n)
        except (GeneratorExit, asyncio.CancelledError):  # closed early, or the call was cancelled
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        self.closed = True


class CharTokenizer:
    """Characters as token ids (decode inverts encode): enough for the bookkeeping of
    relabeling and synthesis around a scripted sampler."""

    bos_token_id = None
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return "".join(chr(int(i)) for i in ids)
