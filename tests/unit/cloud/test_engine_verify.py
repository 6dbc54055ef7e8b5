"""Prefix verification in the batch engine, on a tiny random Gemma 3 (float32, CPU).

A verified prefix is judged in the prefill the continuation needs; the cache is cut
back to prompt + kept tokens in both prefill layouts (packed and padded), so what the
engine generates after a verified prefix must be exactly what it generates for the
prompt followed by the kept tokens alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from edgecloud.cloud._engine import TorchEngine
from edgecloud.cloud._sequence import Sequence_
from edgecloud.types import Chunk, Finish, Retraction, SamplingParams

torch = pytest.importorskip("torch")

Event = Chunk | Finish | Retraction | BaseException
PROMPTS = ([1, 5, 6, 7], [1, 20, 30], [1, 9, 44, 12, 3, 17])
Prefill = Callable[[TorchEngine, Sequence[Sequence_]], Any]
LAYOUTS: dict[str, Prefill] = {
    "packed": lambda engine, seqs: engine._prefill_packed(seqs),
    "padded": lambda engine, seqs: engine._prefill_padded(seqs),
}


def text(ids: Sequence[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    torch.manual_seed(0)
    # Untied and widely initialised, so that greedy decoding does not repeat one token.
    config = Gemma3TextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=64,
        initializer_range=0.3, tie_word_embeddings=False,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config).eval()
    return TorchEngine(model, pad_id=0, device=torch.device("cpu"), use_adapters=False)


class Run:
    """One request: its sequence and the events it emitted."""

    def __init__(self, prompt: list[int], prefix: Sequence[int] = (), *, verify: bool = True,
                 params: SamplingParams | None = None, logprobs: Sequence[float] = (),
                 max_new: int = 64) -> None:  # fmt: skip
        self.events: list[Event] = []
        self.seq = Sequence_(
            request_id=text(prompt), prompt_ids=[*prompt, *prefix],
            params=params or SamplingParams(max_tokens=max_new), adapter_id=None,
            emit=self.events.append, decode=text, eos_ids=frozenset(), max_new_tokens=max_new,
            verify_tokens=len(prefix) if verify else 0, prefix_text=text(prefix),
            prefix_logprobs=tuple(logprobs),
        )  # fmt: skip

    @property
    def tokens(self) -> list[int]:
        return [e.token_id for e in self.events if isinstance(e, Chunk)]

    @property
    def retractions(self) -> list[Retraction]:
        return [e for e in self.events if isinstance(e, Retraction)]


def drive(
    engine: TorchEngine, runs: Sequence[Run], steps: int, prefill: Prefill | None = None
) -> None:
    """Prefill ``runs`` together (with ``prefill``, or as the engine chooses), then decode."""
    seqs = [r.seq for r in runs]
    firsts = (prefill or TorchEngine.prefill)(engine, seqs)
    for seq, step in zip(seqs, firsts, strict=True):
        seq.push(step)
    for _ in range(steps - 1):
        for seq, step in zip(seqs, engine.decode(), strict=True):
            seq.push(step)
    engine.reset()


def greedy(engine: TorchEngine, prompt: list[int], n: int) -> list[int]:
    """The engine's greedy answer to ``prompt`` alone, no prefix."""
    run = Run(prompt)
    drive(engine, [run], n)
    return run.tokens


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_prefix_the_model_agrees_with_is_kept_whole(engine: TorchEngine, layout: str) -> None:
    answer = greedy(engine, PROMPTS[0], 10)
    assert len(set(answer)) > 3  # a model that repeats itself would prove little
    verified, other = Run(PROMPTS[0], answer[:4]), Run(PROMPTS[1])
    drive(engine, [verified, other], 6, LAYOUTS[layout])
    assert verified.retractions == []
    assert verified.tokens == answer[4:]
    assert [e.index for e in verified.events if isinstance(e, Chunk)] == list(range(6))
    assert other.tokens == greedy(engine, PROMPTS[1], 6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_first_disagreeing_token_ends_the_kept_prefix(engine: TorchEngine, layout: str) -> None:
    answer = greedy(engine, PROMPTS[0], 10)
    wrong = next(t for t in range(3, 97) if t != answer[2])
    prefix = [*answer[:2], wrong, *answer[3:5]]
    verified, other = Run(PROMPTS[0], prefix), Run(PROMPTS[2])
    drive(engine, [verified, other], 8, LAYOUTS[layout])
    kept = len(text(answer[:2]))
    assert verified.retractions == [Retraction(kept, text(prefix)[kept:], 2)]
    assert verified.events[0] == verified.retractions[0]  # before any chunk
    # Generated from the position of the wrong token on, over a cache cut back to it:
    # the answer the model gives without the device's draft.
    assert verified.tokens == answer[2:10]
    assert other.tokens == greedy(engine, PROMPTS[2], 8)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_verified_and_plain_rows_in_one_prefill_each_get_their_solo_answer(
    engine: TorchEngine, layout: str
) -> None:
    answers = [greedy(engine, p, 12) for p in PROMPTS]

    def batch() -> list[Run]:
        return [
            Run(PROMPTS[0], [answers[0][0], (answers[0][1] + 1) % 97, 4, 4, 4, 4, 4]),
            Run(PROMPTS[1]),
            Run(PROMPTS[2], answers[2][:5]),
            Run(PROMPTS[1], [(answers[1][0] + 1) % 97]),  # rejected at once
            Run(PROMPTS[0], answers[0][:3], verify=False),  # continued blindly, as before
        ]

    together = batch()
    drive(engine, together, 6, LAYOUTS[layout])
    for run, alone in zip(together, batch(), strict=True):
        drive(engine, [alone], 6)
        assert (run.retractions, run.tokens) == (alone.retractions, alone.tokens)
    first = together[0]
    assert first.retractions[0].kept_tokens == 1 and first.tokens == answers[0][1:7]
    assert together[3].retractions[0].kept_tokens == 0
    assert together[4].retractions == [] and together[2].retractions == []


def test_the_prefill_keeps_logits_only_for_the_prefix_and_the_last_position(
    engine: TorchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    forward = type(engine.model).forward

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = forward(self, *args, **kwargs)
        seen.append(out.logits.shape[1])
        return out

    monkeypatch.setattr(type(engine.model), "forward", spy)
    answer = greedy(engine, PROMPTS[2], 4)
    seen.clear()
    drive(engine, [Run(PROMPTS[2], answer[:3]), Run(PROMPTS[0])], 1, LAYOUTS["packed"])
    drive(engine, [Run(PROMPTS[2], answer[:3]), Run(PROMPTS[0])], 1, LAYOUTS["padded"])
    # Packed: 3 + 1 rows for the verified prompt, 1 for the plain one. Padded: the
    # rows share their right edge, so each keeps the last 3 + 1 positions.
    assert seen == [5, 4]


def sampled(seed: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_tokens=64, temperature=1.0, seed=seed, **kw)


def test_sampling_keeps_what_the_device_drew_from_a_much_narrower_distribution(
    engine: TorchEngine,
) -> None:
    # q tiny (the device was almost sure not to draw it): p/q > 1 wherever p > 0.
    prefix = [11, 12, 13, 14]
    for seed in range(5):
        run = Run(PROMPTS[0], prefix, params=sampled(seed), logprobs=[-60.0] * 4)
        drive(engine, [run], 2)
        assert run.retractions == [] and len(run.tokens) == 2


def test_sampling_rejects_what_the_model_would_never_draw_and_never_redraws_it(
    engine: TorchEngine,
) -> None:
    with torch.inference_mode():
        logits = engine.model(torch.tensor([PROMPTS[0]])).logits[0, -1]
    top2 = logits.topk(2).indices.tolist()
    outside = int(logits.argmin())
    kept_outcomes = []
    for seed in range(24):
        # Outside top-k: p = 0, rejected whatever the device's probability.
        run = Run(
            PROMPTS[0], [outside, top2[0]], params=sampled(seed, top_k=2), logprobs=[0.0, 0.0]
        )
        drive(engine, [run], 1)
        assert run.retractions == [Retraction(0, text([outside, top2[0]]), 0)]
        assert run.tokens[0] in top2
        # The best token, drawn by a device that was sure of it (q = 1): kept with
        # probability p (about 0.6 here); when rejected, the other one comes instead.
        run = Run(PROMPTS[0], [top2[0]], params=sampled(seed, top_k=2), logprobs=[0.0])
        drive(engine, [run], 1)
        if run.retractions:
            assert run.tokens == [top2[1]]
        kept_outcomes.append(not run.retractions)
    assert 0 < sum(kept_outcomes) < len(kept_outcomes)


def test_sampled_verification_is_reproducible_with_a_seed(engine: TorchEngine) -> None:
    def once(seed: int) -> list[Event]:
        run = Run(PROMPTS[2], [3, 4, 5, 6], params=sampled(seed), logprobs=[-3.0] * 4)
        drive(engine, [run], 5)
        return run.events

    assert once(7) == once(7)
    assert any(once(7) != once(s) for s in range(8, 12))


def test_sampling_without_a_logprob_per_token_verifies_by_greedy_agreement(
    engine: TorchEngine,
) -> None:
    answer = greedy(engine, PROMPTS[1], 4)
    wrong = (answer[2] + 1) % 97
    for seed in range(6):
        # Two logprobs for three tokens: the counts differ, so the argmax decides.
        run = Run(PROMPTS[1], [*answer[:2], wrong], params=sampled(seed), logprobs=[-1.0, -1.0])
        drive(engine, [run], 1)
        assert run.retractions == [Retraction(len(text(answer[:2])), text([wrong]), 2)]
        assert run.tokens[0] != wrong  # the rejected token is not drawn again
