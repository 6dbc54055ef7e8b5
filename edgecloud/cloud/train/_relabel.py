"""Labels the cloud's one answer cannot be trusted for: a vote of samples, and the replay check.

A small cloud model given the right passages still answers from its priors now
and then, and a device is confidently wrong now and then. Before a round trains
on such answers they are asked again: :func:`check_replay` sends the replayed
answers the knowledge base contradicts to the vote, and :func:`relabel` keeps
for each record the answer most samples of the cloud model agree on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from edgecloud.cloud.train._examples import TrainingExample, grounded

if TYPE_CHECKING:
    from edgecloud.cloud._knowledge import KnowledgeBase

__all__ = ["check_replay", "prompt_ids", "relabel", "sample_answers"]

log = logging.getLogger("edgecloud.cloud")


def check_replay(
    examples: list[TrainingExample],
    knowledge: KnowledgeBase,
    *,
    top_k: int = 2,
    min_score: float = 0.0,
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(examples to keep, replayed answers to relabel): replay checked against knowledge.

    A replayed record is an answer the device gave confidently, kept so that a round
    does not unlearn it; but a small model is confidently wrong too. When the
    knowledge base has passages for its question (searched as the cloud searches a
    request) that do not support the answer (:func:`grounded`), it is a confident
    wrong answer: replaying it would teach the error, so it goes to the vote with
    those passages, as an escalation would have. Replayed answers the passages
    support, and those the knowledge base knows nothing of, stay as they are.
    """
    from edgecloud.cloud._prompting import question_of

    keep: list[TrainingExample] = []
    wrong: list[TrainingExample] = []
    for ex in examples:
        if not ex.replay:
            keep.append(ex)
            continue
        found = knowledge.search(question_of(ex.prompt), top_k, min_score)
        passages = tuple(p.text for p in found)
        if passages and not grounded(ex.answer, passages):
            wrong.append(dataclasses.replace(ex, replay=False, passages=passages))
        else:
            keep.append(ex)
    log.info("replay: %d of %d replayed answers contradict the knowledge base; relabeling them",
             len(wrong), sum(ex.replay for ex in examples))  # fmt: skip
    return keep, wrong


def prompt_ids(tokenizer: Any, text: str) -> Any:
    """``text`` as the [1, n] token ids :func:`sample_answers` takes, BOS first when the
    tokenizer has one (a base model reads a prompt as the start of a document)."""
    import torch

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return torch.tensor([bos + tokenizer(text, add_special_tokens=False)["input_ids"]])


def sample_answers(
    model: Any,
    tokenizer: Any,
    ids: Any,
    *,
    samples: int,
    budget: int,
    temperature: float,
    terminator: str | None,
    device: Any,
    top_k: int = 64,
    top_p: float = 0.95,
) -> list[str]:
    """``samples`` sampled continuations of the prompt ``ids`` ([1, n] token ids).

    The prompt (passages included: hundreds of tokens) is evaluated once and its
    cache copied to every sample, and each step samples among the ``top_k`` best
    tokens (then ``top_p``), so a step costs one batched forward. transformers'
    ``generate(num_return_sequences=n)`` evaluated the prompt n times and drew
    from the whole 262k vocabulary per row (``multinomial``: 82 ms per step for
    16 rows, as much as the forward). A row stops at ``terminator`` or EOS.
    """
    import torch

    from edgecloud.cloud._hf import cache_keyword, returned_cache

    eos = tokenizer.eos_token_id
    cache_kw = cache_keyword(model)
    tokens: list[list[int]] = [[] for _ in range(samples)]
    done = [False] * samples
    with torch.no_grad():
        out = model(input_ids=ids.to(device), use_cache=True, logits_to_keep=1)
        cache = returned_cache(out)
        cache.batch_repeat_interleave(samples)
        logits = out.logits[:, -1, :].float().expand(samples, -1)
        for _ in range(budget):
            best = torch.topk(logits / temperature, min(top_k, logits.shape[-1]), dim=-1)
            probs = best.values.softmax(-1)
            probs = probs * ((probs.cumsum(-1) - probs) < top_p)  # keeps the best token
            picked = best.indices.gather(1, torch.multinomial(probs, 1))
            for i, token in enumerate(picked[:, 0].tolist()):
                if done[i]:
                    continue
                if token == eos:
                    done[i] = True
                    continue
                tokens[i].append(token)
                if terminator and terminator in tokenizer.decode(tokens[i][-8:]):
                    done[i] = True
            if all(done):
                break
            out = model(input_ids=picked, use_cache=True, **{cache_kw: cache})
            cache = returned_cache(out)
            logits = out.logits[:, -1, :].float()
    return [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


def relabel(
    model: Any,
    tokenizer: Any,
    rejected: Sequence[TrainingExample],
    prompt_format: str,
    *,
    samples: int,
    temperature: float,
    device: Any,
    sampler: Callable[..., list[str]] | None = None,
    min_share: float = 0.5,
) -> list[TrainingExample]:
    """New answers for records by a vote of samples (self-consistency).

    The cloud model is asked again with the same passages in its prompt, sampling
    ``samples`` answers; the answer kept is the most frequent one that is
    :func:`grounded`, when at least two samples agree on it. A small model's greedy
    answer often follows its prior over the context ("100 kg"); among samples the
    one the evidence supports usually recurs. Records with no such answer stay out.
    Measured on 66 learning-loop records: the cloud's own answers were 34 right;
    the vote of 16 samples kept 52, of which 51 right.

    A record the cloud answered without passages has nothing to be grounded in: its
    answer is kept only when at least ``min_share`` of the samples agree on it (the
    teacher is sure), since distilling what a teacher guesses teaches guesses.
    """
    from edgecloud.cloud._prompting import apply_format
    from edgecloud.types import Passage

    sampler = sampler or sample_answers
    out = []
    for ex in rejected:
        text = ex.prompt
        if ex.passages:
            text = apply_format(
                prompt_format, ex.prompt, [Passage(p, "", 0.0) for p in ex.passages]
            )
        ids = prompt_ids(tokenizer, text)
        budget = len(tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) + 8
        answers = sampler(
            model, tokenizer, ids, samples=samples, budget=budget, temperature=temperature,
            terminator=ex.terminator, device=device,
        )  # fmt: skip
        votes: Counter[str] = Counter()
        first: dict[str, str] = {}
        for answer in answers:
            if ex.terminator:
                answer = answer.split(ex.terminator, 1)[0]
            key = answer.strip()
            if key and (not ex.passages or grounded(answer, ex.passages)):
                votes[key] += 1
                first.setdefault(key, answer)
        if votes:
            key, n = votes.most_common(1)[0]
            if n >= (2 if ex.passages else max(2, math.ceil(min_share * samples))):
                out.append(dataclasses.replace(ex, answer=first[key]))
    return out
