"""How well a model answers examples: the held-out exact rate, and the canary it ships.

A held-out share of the records is never trained on: it reports the answer
loss and the exact-answer rate before and after training. The canary is a few
trained examples the adapted torch model answers right: a device running the
exported adapter must answer them too (it checks export and swap, not learning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgecloud.cloud.train._examples import TrainingExample

__all__ = ["answers_right", "canary_pool", "exact_rate", "pick_canary"]


def answers_right(model: Any, tokenizer: Any, ex: TrainingExample, device: Any) -> bool:
    """Whether the greedy answer to ``ex.prompt``, cut at its terminator, is ``ex.answer``."""
    import torch

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = bos + tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
            max_new_tokens=len(target) + 8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or 0,
        )
    text = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    if ex.terminator:
        text = text.split(ex.terminator, 1)[0]
    return bool(text.strip() == ex.answer.strip())


def exact_rate(
    model: Any, tokenizer: Any, examples: Sequence[TrainingExample], device: Any
) -> float:
    """Share of examples whose greedy answer, cut at its terminator, equals the target."""
    right = sum(answers_right(model, tokenizer, ex, device) for ex in examples)
    return right / max(len(examples), 1)


def canary_pool(examples: Sequence[TrainingExample]) -> list[TrainingExample]:
    """Trained examples a contains-check can judge (short, one line), learned and replayed
    ones alternating, so the canary covers what was learned and what must be kept."""
    usable = [
        ex
        for ex in examples
        if ex.answer.strip() and "\n" not in ex.answer.strip() and len(ex.answer.strip()) <= 80
    ]
    learned = [ex for ex in usable if not ex.replay]
    replayed = [ex for ex in usable if ex.replay]
    pool: list[TrainingExample] = []
    for i in range(max(len(learned), len(replayed))):
        pool += [group[i] for group in (learned, replayed) if i < len(group)]
    return pool


def pick_canary(
    model: Any, tokenizer: Any, pool: Sequence[TrainingExample], size: int, device: Any
) -> list[dict[str, Any]]:
    """Up to ``size`` canary items (prompt, expected answer) from ``pool``, in its order:
    those ``model`` answers right, among the first ``4 * size`` (bounded, so that a weak
    adapter does not stall the round)."""
    canary: list[dict[str, Any]] = []
    for ex in pool[: 4 * size]:
        if len(canary) >= size:
            break
        if answers_right(model, tokenizer, ex, device):
            stop = [ex.terminator] if ex.terminator else []
            canary.append({"prompt": ex.prompt, "expect": ex.answer.strip(), "stop": stop})
    return canary
