"""What a training step minimises: examples as token ids with loss masks, batches, the loss.

An example is ``prompt + answer + terminator``, and the loss covers only the
answer and the terminator (the prompt tokens are masked with -100). The
terminator teaches the model to stop where the request stopped: the first stop
sequence when the answer ended on one, else the end-of-sequence token; answers
cut by ``max_tokens`` get none. A passage trains as plain text, with the loss on
every token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgecloud.cloud.train._examples import TrainingExample

__all__ = ["Encoded", "answer_loss", "batches", "collate", "encode", "encode_text", "loss_sum"]


@dataclass(frozen=True, slots=True)
class Encoded:
    """One training row: token ids and their labels (-100: no loss)."""

    ids: list[int]
    labels: list[int]
    anchor: bool = False
    """A replayed local answer: with ``replay_loss = "kl"`` its tokens are trained
    toward the base model's distribution, not toward the one token recorded."""


def encode(tokenizer: Any, ex: TrainingExample, max_length: int) -> Encoded:
    """``ex`` as at most ``max_length`` tokens, the loss on its answer and terminator only.

    A long prompt loses its start (its end, next to the answer, is kept); an answer
    longer than half of ``max_length`` loses its end.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt = bos + tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(ex.answer + (ex.terminator or ""), add_special_tokens=False)["input_ids"]
    if ex.terminator is None and tokenizer.eos_token_id is not None:
        answer = [*answer, tokenizer.eos_token_id]
    answer = answer[: max_length // 2] if len(answer) > max_length // 2 else answer
    room = max_length - len(answer)
    if len(prompt) > room:  # keep the end of the prompt, next to the answer
        prompt = bos + prompt[len(prompt) - room + len(bos) :]
    return Encoded(prompt + answer, [-100] * len(prompt) + answer, anchor=ex.replay)


def encode_text(tokenizer: Any, text: str, max_length: int) -> Encoded:
    """Plain ``text`` (a passage) as at most ``max_length`` tokens, the loss on all of it."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = (bos + tokenizer(text, add_special_tokens=False)["input_ids"])[:max_length]
    return Encoded(ids, [-100] * len(bos) + ids[len(bos) :])


def batches(items: list[Encoded], size: int, rng: random.Random) -> list[list[Encoded]]:
    """``items`` shuffled by ``rng`` and cut into batches of ``size`` (the last may be short)."""
    order = list(items)
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def collate(batch: Sequence[Encoded], pad_id: int, torch: Any, device: Any) -> dict[str, Any]:
    """One padded batch on ``device``: input ids, labels, attention mask and anchor rows."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
        "anchor": torch.tensor([e.anchor for e in batch], dtype=torch.bool, device=device),
    }


def loss_sum(
    model: Any, batch: dict[str, Any], torch: Any, *, anchor_kl: bool = False
) -> tuple[Any, int]:
    """(summed loss over the labelled tokens, their count).

    The loss is cross-entropy, except with ``anchor_kl`` for the batch's anchor
    rows (replayed local answers): there it is KL(base || adapted) over the whole
    vocabulary at each answer position, the base being the same model with its
    adapter disabled. Cross-entropy on a replayed answer only keeps its one
    recorded token likely; the KL keeps the whole distribution where it was, and
    with it the answers to general questions never replayed.

    The logits are computed only at the positions that predict a labelled token
    (``logits_to_keep`` with their indices): the output head of a small model
    with a large vocabulary (Gemma: 262k x 640) costs more than its layers, and
    the prompt positions carry no loss anyway.
    """
    f = torch.nn.functional
    targets = batch["labels"][:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().flatten()
    kwargs: dict[str, Any] = {}
    if _takes_index_tensor(model):
        kwargs["logits_to_keep"] = keep

    def logits_of(m: Any, rows: Any) -> Any:
        out = m(
            input_ids=batch["input_ids"][rows],
            attention_mask=batch["attention_mask"][rows],
            **kwargs,
        ).logits
        return out if "logits_to_keep" in kwargs else out[:, :-1][:, keep]

    every = torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
    logits = logits_of(model, every)
    picked = targets[:, keep]
    anchor = batch["anchor"] if anchor_kl else torch.zeros_like(every)
    plain = ~anchor
    loss = f.cross_entropy(
        logits[plain].float().reshape(-1, logits.shape[-1]),
        picked[plain].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    if bool(anchor.any()):
        with torch.no_grad(), model.disable_adapter():
            reference = logits_of(model, anchor)
        where = picked[anchor] != -100
        log_q = f.log_softmax(logits[anchor][where].float(), dim=-1)
        log_p = f.log_softmax(reference[where].float(), dim=-1)
        loss = loss + f.kl_div(log_q, log_p, log_target=True, reduction="sum")
    return loss, int((picked != -100).sum())


def _takes_index_tensor(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (an index tensor since
    transformers 4.50 for most causal LMs)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def answer_loss(model: Any, items: list[Encoded], pad_id: int, torch: Any, device: Any) -> float:
    """Mean loss per answer token over ``items``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), 16):
            loss, n = loss_sum(model, collate(items[i : i + 16], pad_id, torch, device), torch)
            total += float(loss)
            count += n
    return total / max(count, 1)
