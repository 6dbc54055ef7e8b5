"""LoRA training of device adapters from the cloud's escalation records.

A record holds what a device asked (``prompt``), what it had produced before
the hand-off (``local_partial``) and what the cloud answered after it
(``cloud_answer``), plus the knowledge passages the cloud retrieved and the
request's stop sequences. Distillation trains the device's own base model
(the dequantized GGUF, the same weights the devices run) to produce the
answer from the prompt alone, so the device no longer needs the cloud or its
knowledge base for it:

- the example is ``prompt + answer + terminator``, and the loss covers only the
  answer and the terminator (the prompt tokens are masked with -100). The
  terminator teaches the model to stop where the request stopped: the first
  stop sequence when the answer ended on one, else the end-of-sequence token;
  answers cut by ``max_tokens`` get none.
- with ``include_passages`` the retrieved passages are trained on too, as
  plain text with the loss on every token, so the facts behind the answers
  are learned in the words of the source, not only in the phrasings that were
  asked (``bench/learning_loop.py`` measures whether it helps).
- a held-out share of the records (chosen by a seeded hash of the record id,
  so the split is stable across runs) is never trained on: it reports the
  answer loss and the exact-answer rate before and after training.

LoRA (peft) goes on the attention and MLP projections named in the config;
Gemma ties its embedding to the output head, so no embedding is adapted.
CPU float32 here; CUDA in bfloat16 when present.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.cloud._records import StoredRecord
from edgecloud.cloud._settings import CloudTrainConfig
from edgecloud.errors import CloudModelLoadError, InvalidRequestError

__all__ = [
    "TrainProgress",
    "TrainReport",
    "TrainingExample",
    "common_prompt_prefix",
    "examples_from_records",
    "grounded",
    "relabel",
    "split_holdout",
    "train_lora",
]

log = logging.getLogger("edgecloud.cloud")

TrainProgress = Callable[[int, int, float], None]
"""Called after each optimizer step with (step, total steps, mean loss of the step)."""


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """One distillation target: the device's prompt and the answer it should give."""

    prompt: str
    answer: str
    terminator: str | None = None
    """Text appended after the answer (a stop sequence); None: the EOS token; '': nothing."""
    passages: tuple[str, ...] = ()
    record_id: str = ""
    replay: bool = False
    """A confident local answer the device already gives (keeps it from being forgotten)."""


@dataclass(slots=True)
class TrainReport:
    """What a round of training did and how well it went."""

    examples: int
    train: int
    holdout: int
    passages: int
    replay: int
    relabeled: int
    epochs: int
    steps: int
    seconds: float
    train_loss: float
    holdout_loss_before: float | None = None
    holdout_loss_after: float | None = None
    holdout_exact_before: float | None = None
    holdout_exact_after: float | None = None
    replay_contradicted: int = 0
    """Replayed local answers the knowledge base contradicted, relabeled instead."""
    losses: list[float] = field(default_factory=list)
    canary: list[dict[str, str]] = field(default_factory=list)
    """Trained examples the adapted torch model answers right: a device running the
    exported adapter must answer them too (checks export and swap, not learning)."""

    def metrics(self) -> dict[str, float]:
        """The numeric fields, for a manifest."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = float(value)
        return out


def examples_from_records(
    records: Iterable[StoredRecord],
    *,
    require_grounded: bool = True,
    rejected: list[TrainingExample] | None = None,
    relabel_all: bool = False,
) -> list[TrainingExample]:
    """Distillation examples from stored escalation records.

    Records the cloud did not finish (cancelled) or with an empty answer are
    skipped; so are records of chat prompts, whose rendering depends on the
    device's template (their text is kept in ``extra["messages"]``; see below).
    With ``require_grounded``, a record answered from knowledge passages is kept
    only when its answer is :func:`grounded` in them (the others go to
    ``rejected`` when given, for :func:`train_lora` to relabel). With ``relabel_all``
    (and ``rejected`` given) every escalated record goes there, to be labelled by a
    vote of samples instead of the cloud's one answer (with its passages, or without
    when it had none). Replay records (confident
    local answers, ``extra["kind"] == "replay"``, see ``device.log.replay_rate``)
    become examples of what the device should keep answering the same way.
    """
    out = []
    for stored in records:
        r = stored.record
        extra = dict(r.extra)
        finish = extra.get("finish", "stop")
        answer = r.local_partial + r.cloud_answer
        if finish == "cancelled" or not answer.strip():
            continue
        if "messages" in extra:
            # The device rendered these with its chat template, which the record does
            # not say; training on another rendering would teach the wrong prompt.
            continue
        stop = [s for s in extra.get("stop", []) if isinstance(s, str) and s]
        terminator: str | None
        if finish == "length":
            terminator = ""
        elif stop:
            terminator = stop[0]
        else:
            terminator = None
        passages = tuple(
            str(p.get("text", "")) for p in extra.get("passages", []) if isinstance(p, dict)
        )
        replay = extra.get("kind") == "replay"
        example = TrainingExample(
            prompt=r.prompt,
            answer=answer,
            terminator=terminator,
            passages=tuple(p for p in passages if p),
            record_id=r.id,
            replay=replay,
        )
        if rejected is not None and relabel_all and not replay:
            rejected.append(example)
            continue
        if require_grounded and passages and not grounded(answer, passages):
            if rejected is not None:
                rejected.append(example)
            continue
        out.append(example)
    return out


_WORD = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:[-'][^\W\d_]+)*", re.UNICODE)
_NUMBER = re.compile(r"\d")


def grounded(answer: str, passages: Sequence[str], *, min_word_chars: int = 3) -> bool:
    """Whether every number and every word of ``min_word_chars`` or more letters in
    ``answer`` occurs in ``passages`` (case-insensitive; numbers whole, so "8" is not
    in "8.5").

    A small cloud model given the right passage still answers from its own priors
    now and then ("100 kg" where the manual says 22.0 kg); training a device on
    that would teach it the error. An answer whose content words and numbers all
    come from the evidence it was given is far more likely right.
    """
    evidence = {w.lower() for p in passages for w in _WORD.findall(p)}
    words = [w.lower() for w in _WORD.findall(answer)]
    content = [w for w in words if _NUMBER.search(w) or len(w) >= min_word_chars]
    return bool(content) and all(w in evidence for w in content)


def common_prompt_prefix(examples: Sequence[TrainingExample]) -> str:
    """The whole lines every prompt starts with (few-shot examples, a system prompt).

    Cut at a line end so no example loses part of its own line; empty when fewer
    than two examples or nothing is shared.
    """
    if len(examples) < 2:
        return ""
    prefix = os.path.commonprefix([ex.prompt for ex in examples])  # noqa: RUF071 - text, not paths
    cut = prefix.rfind("\n")
    return prefix[: cut + 1] if cut >= 0 else ""


def split_holdout(
    examples: Sequence[TrainingExample], fraction: float, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, holdout): each example goes to the holdout when a seeded hash of its id says so.

    Hashing the id (not shuffling) keeps an example on the same side when
    records are added later; examples without an id hash their prompt.
    """
    if fraction <= 0:
        return list(examples), []
    train: list[TrainingExample] = []
    held: list[TrainingExample] = []
    for ex in examples:
        key = f"{seed}:{ex.record_id or ex.prompt}".encode()
        u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        (held if u < fraction else train).append(ex)
    if not train:  # a tiny set must still train on something
        train, held = held, []
    return train, held


@dataclass(frozen=True, slots=True)
class _Encoded:
    ids: list[int]
    labels: list[int]
    anchor: bool = False
    """A replayed local answer: with ``replay_loss = "kl"`` its tokens are trained
    toward the base model's distribution, not toward the one token recorded."""


def _encode(tokenizer: Any, ex: TrainingExample, max_length: int) -> _Encoded:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt = bos + tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(ex.answer + (ex.terminator or ""), add_special_tokens=False)["input_ids"]
    if ex.terminator is None and tokenizer.eos_token_id is not None:
        answer = [*answer, tokenizer.eos_token_id]
    answer = answer[: max_length // 2] if len(answer) > max_length // 2 else answer
    room = max_length - len(answer)
    if len(prompt) > room:  # keep the end of the prompt, next to the answer
        prompt = bos + prompt[len(prompt) - room + len(bos) :]
    return _Encoded(prompt + answer, [-100] * len(prompt) + answer, anchor=ex.replay)


def _encode_text(tokenizer: Any, text: str, max_length: int) -> _Encoded:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = (bos + tokenizer(text, add_special_tokens=False)["input_ids"])[:max_length]
    return _Encoded(ids, [-100] * len(bos) + ids[len(bos) :])


def _batches(items: list[_Encoded], size: int, rng: random.Random) -> list[list[_Encoded]]:
    order = list(items)
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def _collate(batch: Sequence[_Encoded], pad_id: int, torch: Any, device: Any) -> dict[str, Any]:
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


def _loss_sum(
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


def _answer_loss(model: Any, items: list[_Encoded], pad_id: int, torch: Any, device: Any) -> float:
    """Mean loss per answer token over ``items``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), 16):
            loss, n = _loss_sum(model, _collate(items[i : i + 16], pad_id, torch, device), torch)
            total += float(loss)
            count += n
    return total / max(count, 1)


def _answers_right(model: Any, tokenizer: Any, ex: TrainingExample, device: Any) -> bool:
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


def _exact_rate(
    model: Any, tokenizer: Any, examples: Sequence[TrainingExample], device: Any
) -> float:
    """Share of examples whose greedy answer, cut at its terminator, equals the target."""
    right = sum(_answers_right(model, tokenizer, ex, device) for ex in examples)
    return right / max(len(examples), 1)


def _canary_pool(examples: Sequence[TrainingExample]) -> list[TrainingExample]:
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
    import torch

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
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = torch.tensor([bos + tokenizer(text, add_special_tokens=False)["input_ids"]])
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


def train_lora(
    model_dir: Path,
    examples: Sequence[TrainingExample],
    config: CloudTrainConfig,
    out_dir: Path,
    *,
    progress: TrainProgress | None = None,
    evaluate_exact: bool = True,
    rejected: Sequence[TrainingExample] = (),
    prompt_format: str = "Context: {context}\n\n{prompt}",
    on_stage: Callable[[str], None] | None = None,
    canary_size: int = 8,
    used: list[TrainingExample] | None = None,
) -> TrainReport:
    """Train a LoRA adapter on ``examples`` and save it (peft format) in ``out_dir``.

    Args:
        model_dir: a Hugging Face model directory (the dequantized base, see
            :func:`edgecloud.cloud._torch.resolve_model_dir`).
        examples: distillation examples; a share is held out per ``config``.
        config: rank, alpha, target modules, epochs, learning rate, seed...
        out_dir: gets ``adapter_config.json`` and ``adapter_model.safetensors``.
        progress: called after every optimizer step.
        evaluate_exact: also generate the held-out answers before and after
            (slower; the loss is always reported).
        rejected: examples whose answers failed the grounding check, to
            :func:`relabel` first (``config.relabel_samples`` > 0).
        prompt_format: the cloud's ``cloud.model.prompt_format``, for relabeling.
        on_stage: told when relabeling and training start.
        canary_size: canary items to pick (see :attr:`TrainReport.canary`).
        used: gets the examples the round ended up with (relabeled ones with their
            new answers; records the vote left out are not in it), held-out ones
            included.

    Raises:
        InvalidRequestError: fewer usable examples than ``config.min_records``
            (counting those to relabel before relabeling, and again after).
        CloudModelLoadError: the base model or peft could not be loaded.
    """
    candidates = len(examples) + (len(rejected) if config.relabel_samples > 0 else 0)
    if candidates < config.min_records:
        raise InvalidRequestError(
            f"{candidates} usable records; a round needs at least {config.min_records}"
        )
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise CloudModelLoadError(
            "training needs torch, transformers and peft: pip install 'edgecloud[cloud]'"
        ) from exc
    t0 = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    from edgecloud.cloud._torch import auto_dtype

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, config.dtype if config.dtype != "auto" else auto_dtype(cuda))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        base: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        base = base.to(device)
    except (OSError, ValueError) as exc:
        raise CloudModelLoadError(f"cannot load the base model from {model_dir}: {exc}") from exc
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    relabeled: list[TrainingExample] = []
    if rejected and config.relabel_samples > 0:
        if on_stage is not None:
            on_stage(
                f"relabeling {len(rejected)} answers by a vote of "
                f"{config.relabel_samples} samples each"
            )
        base.eval()
        relabeled = relabel(
            base, tokenizer, rejected, prompt_format,
            samples=config.relabel_samples, temperature=config.relabel_temperature, device=device,
            min_share=config.relabel_min_share,
        )  # fmt: skip
        log.info("relabeled %d of %d records", len(relabeled), len(rejected))
        examples = [*examples, *relabeled]
    if len(examples) < config.min_records:
        raise InvalidRequestError(
            f"{len(examples)} usable records after relabeling {len(rejected)} by a vote of "
            f"samples; a round needs at least {config.min_records}"
        )
    if used is not None:
        used.extend(examples)
    train, holdout = split_holdout(examples, config.holdout_fraction, config.seed)
    pool = _canary_pool(train)  # full prompts, as devices send them
    shared = common_prompt_prefix(examples) if config.strip_common_prefix else ""
    if shared:
        log.info("training without the %d-character prompt prefix all records share", len(shared))
        train = [dataclasses.replace(ex, prompt=ex.prompt[len(shared) :]) for ex in train]
    items = [_encode(tokenizer, ex, config.max_length) for ex in train]
    passages: list[str] = []
    if config.include_passages:
        seen: set[str] = set()
        for ex in train:
            for p in ex.passages:
                if p not in seen:
                    seen.add(p)
                    passages.append(p)
        items += [_encode_text(tokenizer, p, config.max_length) for p in passages]
    held_items = [_encode(tokenizer, ex, config.max_length) for ex in holdout]

    report = TrainReport(
        examples=len(examples),
        train=len(train),
        holdout=len(holdout),
        passages=len(passages),
        replay=sum(ex.replay for ex in train),
        relabeled=len(relabeled),
        epochs=config.epochs,
        steps=0,
        seconds=0.0,
        train_loss=math.nan,
    )
    base.eval()
    if held_items:
        report.holdout_loss_before = _answer_loss(base, held_items, pad_id, torch, device)
        if evaluate_exact:
            report.holdout_exact_before = _exact_rate(base, tokenizer, holdout, device)

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft types it int; floats work
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(base, lora)
    except ValueError as exc:  # e.g. a target module the model does not have
        raise InvalidRequestError(f"cannot apply LoRA: {exc}") from exc
    if on_stage is not None:
        on_stage(f"training LoRA on {len(items)} examples ({len(passages)} passages)")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(config.seed)
    per_epoch = math.ceil(len(items) / config.batch_size)
    total = per_epoch * config.epochs
    model.train()
    epoch_losses = []
    for _epoch in range(config.epochs):
        losses = []
        for batch in _batches(items, config.batch_size, rng):
            total_loss, n_tokens = _loss_sum(
                model,
                _collate(batch, pad_id, torch, device),
                torch,
                anchor_kl=config.replay_loss == "kl",
            )
            loss = total_loss / max(n_tokens, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            report.steps += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(report.steps, total, losses[-1])
        epoch_losses.append(sum(losses) / len(losses))
    report.losses = epoch_losses
    report.train_loss = epoch_losses[-1]
    model.eval()
    if held_items:
        report.holdout_loss_after = _answer_loss(model, held_items, pad_id, torch, device)
        if evaluate_exact:
            report.holdout_exact_after = _exact_rate(model, tokenizer, holdout, device)
    for ex in pool[: 4 * canary_size]:  # bounded: a weak adapter must not stall the round
        if len(report.canary) >= canary_size:
            break
        if _answers_right(model, tokenizer, ex, device):
            report.canary.append({"prompt": ex.prompt, "expect": ex.answer.strip()})
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    report.seconds = time.perf_counter() - t0
    (out_dir / "train_report.json").write_text(json.dumps(asdict(report), indent=2))
    log.info("trained %d steps in %.0f s", report.steps, report.seconds)
    return report
