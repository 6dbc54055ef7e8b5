"""The cloud verifies a hand-off's prefix before it continues it, end to end: a real grpc.aio
server on 127.0.0.1 (port 0), the real default model, the fleet manual as knowledge.

float32 (one torch thread): the tests compare token ids exactly, and bfloat16 breaks a
near-tie differently when a prefix is prefilled at once than when the same tokens were
decoded one by one. The model is a 270M base model, so the prompts are few-shot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from edgecloud.cloud import CloudRequest, CloudServer, TorchBackend
from edgecloud.cloud._knowledge import KnowledgeBase
from edgecloud.config import CloudConfig
from edgecloud.errors import InvalidRequestError
from edgecloud.transport import CloudClient
from edgecloud.types import Chunk, Finish, Retraction, SamplingParams
from tests.integration._cloudlocal import (
    CONFIG,
    FEW_SHOT,
    ROOT,
    fleet_knowledge,
    float32_backend,
    run,
)
from tests.integration._cloudproc import client

pytestmark = [pytest.mark.model]


@pytest.fixture(scope="module")
def backend() -> Iterator[TorchBackend]:
    yield from float32_backend()


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    return fleet_knowledge(tmp_path_factory)


@asynccontextmanager
async def cloud(
    backend: TorchBackend, kb: KnowledgeBase | None = None
) -> AsyncIterator[CloudClient]:
    server = await CloudServer.start(backend, CloudConfig.model_validate(CONFIG), knowledge=kb)
    try:
        async with client(server) as c:
            yield c
    finally:
        await server.stop(0)


class Answer:
    """One stream's events, split: the retraction (if any), the chunks, the finish."""

    def __init__(self, events: list[Any]) -> None:
        self.retractions = [e for e in events if isinstance(e, Retraction)]
        self.chunks: list[Chunk] = [e for e in events if isinstance(e, Chunk)]
        finish = events[-1]
        assert isinstance(finish, Finish)
        self.finish = finish
        # The contract: at most one retraction, and before any chunk.
        assert len(self.retractions) <= 1
        assert not self.retractions or events[0] is self.retractions[0]

    @property
    def tokens(self) -> list[int]:
        return [ch.token_id for ch in self.chunks if ch.token_id >= 0]

    @property
    def text(self) -> str:
        return "".join(ch.text for ch in self.chunks)

    def after(self, prefix: str) -> str:
        """The whole answer as the app shows it: the kept prefix, then the chunks."""
        kept = self.retractions[0].kept if self.retractions else len(prefix)
        return prefix[:kept] + self.text


async def ask(c: CloudClient, prompt: str, **kwargs: Any) -> Answer:
    return Answer([event async for event in c.stream(prompt, **kwargs)])


def round_trips(backend: TorchBackend, ids: list[int]) -> bool:
    """Whether the cloud tokenizes the text of ``ids`` back to ``ids`` (a hand-off point)."""
    text = backend._decode(ids)
    return bool(backend.tokenizer(text, add_special_tokens=False)["input_ids"] == ids)


def test_the_cloud_own_greedy_prefix_is_kept_and_continued_token_for_token(
    backend: TorchBackend,
) -> None:
    prompt = "Why is the sky blue?"

    async def scenario() -> tuple[Answer, Answer, int]:
        async with cloud(backend) as c:
            full = await ask(c, prompt, max_tokens=16)
            k = next(k for k in range(4, 10) if round_trips(backend, full.tokens[:k]))
            tail = await ask(c, prompt, max_tokens=16 - k, verify_prefix=True,
                             assistant_prefix=backend._decode(full.tokens[:k]))  # fmt: skip
            return full, tail, k

    full, tail, k = run(scenario)
    assert tail.retractions == []
    assert tail.tokens == full.tokens[k:]
    assert backend._decode(full.tokens[:k]) + tail.text == full.text
    assert [ch.index for ch in tail.chunks] == list(range(16 - k))
    assert tail.finish.completion_tokens == 16 - k


def test_a_wrong_number_is_retracted_and_the_cloud_answers_from_before_it(
    backend: TorchBackend,
) -> None:
    prompt = f"{FEW_SHOT}Q: How many hours are in a day?\nA:"
    prefix = " 12 hours"

    async def scenario() -> tuple[Answer, Answer, Answer]:
        async with cloud(backend) as c:
            plain = await ask(c, prompt, max_tokens=6, stop=["\n"])
            verified = await ask(
                c, prompt, max_tokens=6, stop=["\n"], assistant_prefix=prefix, verify_prefix=True
            )
            kept = verified.retractions[0].kept if verified.retractions else len(prefix)
            # The same continuation, asked for directly after the kept text.
            direct = await ask(c, prompt, max_tokens=6, stop=["\n"], assistant_prefix=prefix[:kept])
            return plain, verified, direct

    plain, verified, direct = run(scenario)
    assert "24" in plain.text, plain.text  # the model knows it
    [retraction] = verified.retractions
    assert retraction.kept <= prefix.index("1")
    assert retraction.rejected == prefix[retraction.kept :]
    assert verified.tokens == direct.tokens
    assert verified.after(prefix) == plain.text
    # Usage counts what follows the kept text, as for a prefix sent without verifying.
    assert verified.finish.completion_tokens == direct.finish.completion_tokens


def test_a_prefix_cut_mid_word_keeps_whole_characters_and_a_sound_answer(
    backend: TorchBackend,
) -> None:
    prompt = f"{FEW_SHOT}Q: What is the capital of Italy?\nA:"
    prefix = " Ro"  # the device stopped inside " Rome"

    async def scenario() -> tuple[Answer, Answer]:
        async with cloud(backend) as c:
            plain = await ask(c, prompt, max_tokens=4, stop=["\n"])
            verified = await ask(
                c, prompt, max_tokens=4, stop=["\n"], assistant_prefix=prefix, verify_prefix=True
            )
            return plain, verified

    plain, verified = run(scenario)
    assert plain.text.startswith(" Rome"), plain.text
    # The cloud's own token is " Rome": " Ro" is not its choice, so it goes back, whole.
    assert verified.retractions == [Retraction(0, " Ro", 0)]
    assert verified.after(prefix) == plain.text


def test_a_prefix_longer_than_the_context_fails_before_anything_is_generated(
    backend: TorchBackend,
) -> None:
    async def scenario() -> list[Any]:
        seen: list[Any] = []
        async with cloud(backend) as c:
            with pytest.raises(InvalidRequestError, match="assistant prefix"):
                async for event in c.stream(
                    "Why?", max_tokens=4, assistant_prefix=" word" * 600, verify_prefix=True
                ):
                    seen.append(event)
        return seen

    assert run(scenario) == []


def test_with_knowledge_the_wrong_number_is_rejected_and_the_passage_number_comes(
    backend: TorchBackend, knowledge: KnowledgeBase
) -> None:
    facts = json.loads((ROOT / "bench" / "data" / "fleet_facts.json").read_text())
    fact = next(f for f in facts if f["fact"] == "kestrel.payload")
    prompt = f"{FEW_SHOT}Q: {fact['phrasings'][0]}\nA:"
    prefix = " 1000 kg"  # the device's guess

    async def scenario() -> Answer:
        async with cloud(backend, knowledge) as c:
            return await ask(
                c, prompt, max_tokens=8, stop=["\n"], assistant_prefix=prefix, verify_prefix=True
            )

    verified = run(scenario)
    assert verified.finish.passages and verified.finish.passages[0].source == "kestrel.md"
    [retraction] = verified.retractions
    assert "1000" in retraction.rejected and retraction.kept <= prefix.index("1")
    answer = verified.after(prefix)
    assert fact["answers"][0] in answer, answer  # 22.0, from the passage
    assert "1000" not in answer


def test_speculative_rounds_give_the_cloud_greedy_answer_one_forward_each(
    backend: TorchBackend,
) -> None:
    prompt = f"{FEW_SHOT}Q: What is the largest planet in the solar system?\nA:"
    total = 12
    wrong = backend.tokenizer(" banana", add_special_tokens=False)["input_ids"][0]

    async def scenario() -> tuple[list[Answer], int]:
        async with cloud(backend) as c:
            # A few tokens beyond ``total``: the last round may settle past it.
            ids = (await ask(c, prompt, max_tokens=total + 4)).tokens
            assert round_trips(backend, ids)
            steps = backend._scheduler.steps
            rounds: list[Answer] = []
            settled = 0  # answer tokens the rounds have produced
            while settled < total:
                # A drafter that is right most of the time: 3 tokens, the third one
                # wrong every other round.
                draft = ids[settled : settled + 3]
                if len(rounds) % 2 == 1 and len(draft) == 3:
                    draft[2] = wrong
                prefix = backend._decode(ids[:settled] + draft)
                answer = await ask(
                    c, prompt, max_tokens=1, assistant_prefix=prefix, verify_prefix=True
                )
                rounds.append(answer)
                kept = answer.retractions[0].kept_tokens if answer.retractions else None
                settled = (settled + len(draft) if kept is None else kept) + 1
                # Each round ends exactly where the cloud's own greedy answer is then.
                assert answer.after(prefix) == backend._decode(ids[:settled])
            return rounds, backend._scheduler.steps - steps

    rounds, decode_steps = run(scenario)
    assert decode_steps == 0  # each round was one prefill over prompt + prefix, nothing more
    assert all(len(r.tokens) == r.finish.completion_tokens == 1 for r in rounds)
    assert any(r.retractions for r in rounds) and any(not r.retractions for r in rounds)
    assert len(rounds) <= total / 2  # far fewer cloud forwards than tokens


def test_a_verified_request_batched_with_plain_ones_gets_what_it_gets_alone(
    backend: TorchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefills: list[int] = []
    prefill = backend.engine.prefill

    def spy(seqs: Any) -> Any:
        prefills.append(len(seqs))
        return prefill(seqs)

    monkeypatch.setattr(backend.engine, "prefill", spy)
    requests = [
        CloudRequest(f"{FEW_SHOT}Q: How many days are there in a week?\nA:",
                     SamplingParams(max_tokens=6), assistant_prefix=" 9 days",
                     verify_prefix=True),
        CloudRequest("Why is the sky blue?", SamplingParams(max_tokens=6)),
        CloudRequest("The capital of France is", SamplingParams(max_tokens=6)),
        CloudRequest("Why is the sky blue?", SamplingParams(max_tokens=6),
                     assistant_prefix=" The sky is green", verify_prefix=True),
    ]  # fmt: skip

    async def events(request: CloudRequest) -> list[Any]:
        return [e async for e in backend.generate(request)]

    async def scenario() -> tuple[list[list[Any]], list[list[Any]]]:
        together = await asyncio.gather(*(events(r) for r in requests))
        alone = [await events(r) for r in requests]
        return together, alone

    together, alone = run(scenario)
    assert prefills[0] == len(requests)  # one prefill for all four
    assert prefills[1:] == [1] * len(requests)
    for batched, solo in zip(together, alone, strict=True):
        a, b = Answer(batched), Answer(solo)
        assert (a.retractions, a.tokens) == (b.retractions, b.tokens)
    assert Answer(together[0]).retractions and Answer(together[3]).retractions
