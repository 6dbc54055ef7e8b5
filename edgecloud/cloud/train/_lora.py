"""The LoRA training loop: the device's own base model, adapted on distillation examples.

Distillation trains the device's base model (the dequantized GGUF, the same
weights the devices run) to produce each example's answer from its prompt
alone, so the device no longer needs the cloud or its knowledge base for it.
Examples whose answers cannot be trusted are first relabeled by a vote of
samples of the same model (:mod:`._relabel`); with ``include_passages`` the
retrieved passages are trained on too, as plain text, so the facts behind the
answers are learned in the words of the source, not only in the phrasings that
were asked (``bench/learning_loop.py`` measures whether it helps).

LoRA (peft) goes on the attention and MLP projections named in the config;
Gemma ties its embedding to the output head, so no embedding is adapted.
CPU float32 here; CUDA in bfloat16 when present.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.cloud._settings import CloudTrainConfig
from edgecloud.cloud.train._evaluate import canary_pool, exact_rate, pick_canary
from edgecloud.cloud.train._examples import (
    TrainingExample,
    common_prompt_prefix,
    split_holdout,
    strip_prefix,
    unique_passages,
)
from edgecloud.cloud.train._loss import (
    Encoded,
    answer_loss,
    batches,
    collate,
    encode,
    encode_text,
    loss_sum,
)
from edgecloud.cloud.train._relabel import relabel
from edgecloud.errors import CloudModelLoadError, InvalidRequestError

if TYPE_CHECKING:
    from edgecloud.cloud._knowledge import KnowledgeBase

__all__ = ["LoraResult", "StageCallback", "TrainProgress", "TrainReport", "train_lora"]

log = logging.getLogger("edgecloud.cloud")

TrainProgress = Callable[[int, int, float], None]
"""Called after each optimizer step with (step, total steps, mean loss of the step)."""

StageCallback = Callable[[str], None]
"""Called with a short description as each stage starts."""


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
    synthesized: int = 0
    """Questions the cloud wrote from its knowledge base, answered and kept (trained on;
    never held out, so the held-out figures stay those of the devices' own requests)."""
    losses: list[float] = field(default_factory=list)
    canary: list[dict[str, Any]] = field(default_factory=list)
    """Trained examples the adapted torch model answers right: a device running the
    exported adapter must answer them too (checks export and swap, not learning)."""

    def metrics(self) -> dict[str, float]:
        """The numeric fields, for a manifest."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = float(value)
        return out


@dataclass(frozen=True, slots=True)
class LoraResult:
    """What :func:`train_lora` made: the saved adapter, how training went, and on what."""

    peft_dir: Path
    """``adapter_config.json``, ``adapter_model.safetensors`` and ``train_report.json``."""
    report: TrainReport
    examples: tuple[TrainingExample, ...]
    """The examples the round ended up with, held-out ones included: relabeled ones with
    their new answers; records the vote left out are not in it."""
    holdout: tuple[TrainingExample, ...] = ()
    """The examples held out of training (``config.holdout_fraction``), full prompts."""


@dataclass(frozen=True, slots=True)
class _Base:
    """The loaded base model and what running it needs."""

    torch: Any
    model: Any
    tokenizer: Any
    device: Any
    pad_id: int


@dataclass(frozen=True, slots=True)
class _Data:
    """The examples as the loop and the evaluation use them."""

    train: list[TrainingExample]
    holdout: list[TrainingExample]
    pool: list[TrainingExample]
    items: list[Encoded]
    passages: list[str]
    held_items: list[Encoded]


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
    on_stage: StageCallback | None = None,
    canary_size: int = 8,
    knowledge: KnowledgeBase | None = None,
    knowledge_top_k: int = 2,
    knowledge_min_score: float = 0.0,
) -> LoraResult:
    """Train a LoRA adapter on ``examples`` and save it (peft format) in ``out_dir``.

    Args:
        model_dir: a Hugging Face model directory (the dequantized base, see
            :func:`edgecloud.cloud._torch.resolve_model_dir`).
        examples: distillation examples; a share is held out per ``config``.
        config: rank, alpha, target modules, epochs, learning rate, seed...
        out_dir: gets ``adapter_config.json``, ``adapter_model.safetensors`` and
            ``train_report.json``.
        progress: called after every optimizer step.
        evaluate_exact: also generate the held-out answers before and after
            (slower; the loss is always reported).
        rejected: examples whose answers cannot be trusted as they are, to
            :func:`~edgecloud.cloud.train._relabel.relabel` first
            (``config.relabel_samples`` > 0).
        prompt_format: the cloud's ``cloud.model.prompt_format``, for relabeling.
        on_stage: told when relabeling and training start.
        canary_size: canary items to pick (see :attr:`TrainReport.canary`).
        knowledge: the cloud's knowledge base, to write questions from
            (``config.synthesize``), searched with ``knowledge_top_k`` and
            ``knowledge_min_score`` as the service searches.

    Returns:
        The adapter's directory, the report, and the examples trained and held out.

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
    torch = _import_torch()
    t0 = time.perf_counter()
    base = _load_base(torch, model_dir, config)
    relabeled = _vote(base, rejected, config, prompt_format, on_stage)
    examples = [*examples, *relabeled]
    if len(examples) < config.min_records:
        raise InvalidRequestError(
            f"{len(examples)} usable records after relabeling {len(rejected)} by a vote of "
            f"samples; a round needs at least {config.min_records}"
        )
    synthetic = _synthesize(
        base, examples, config, prompt_format, on_stage, knowledge, knowledge_top_k,
        knowledge_min_score,
    )  # fmt: skip
    data = _prepare(base.tokenizer, examples, config, synthetic)
    report = TrainReport(
        examples=len(examples),
        train=len(data.train),
        holdout=len(data.holdout),
        passages=len(data.passages),
        replay=sum(ex.replay for ex in data.train),
        relabeled=len(relabeled),
        synthesized=len(synthetic),
        epochs=config.epochs,
        steps=0,
        seconds=0.0,
        train_loss=math.nan,
    )
    base.model.eval()
    report.holdout_loss_before, report.holdout_exact_before = _evaluate(
        base, base.model, data, evaluate_exact
    )
    model = _apply_lora(base.model, config)
    if on_stage is not None:
        on_stage(f"training LoRA on {len(data.items)} examples ({len(data.passages)} passages)")
    _fit(base, model, data.items, config, report, progress)
    model.eval()
    report.holdout_loss_after, report.holdout_exact_after = _evaluate(
        base, model, data, evaluate_exact
    )
    report.canary = pick_canary(model, base.tokenizer, data.pool, canary_size, base.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    report.seconds = time.perf_counter() - t0
    (out_dir / "train_report.json").write_text(json.dumps(asdict(report), indent=2))
    log.info("trained %d steps in %.0f s", report.steps, report.seconds)
    return LoraResult(out_dir, report, tuple(examples + synthetic), tuple(data.holdout))


def _import_torch() -> Any:
    """torch, once transformers and peft are known to import too."""
    try:
        import peft  # noqa: F401 - checked here, before the slow load; imported where used
        import torch
        import transformers  # noqa: F401 - as peft
    except ImportError as exc:
        raise CloudModelLoadError(
            "training needs torch, transformers and peft: pip install 'edgecloud[cloud]'"
        ) from exc
    return torch


def _load_base(torch: Any, model_dir: Path, config: CloudTrainConfig) -> _Base:
    """The base model and its tokenizer on the training device, the seeds set first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgecloud.cloud._torch import auto_dtype

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, config.dtype if config.dtype != "auto" else auto_dtype(cuda))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        model = model.to(device)
    except (OSError, ValueError) as exc:
        raise CloudModelLoadError(f"cannot load the base model from {model_dir}: {exc}") from exc
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _Base(torch, model, tokenizer, device, pad_id)


def _vote(
    base: _Base,
    rejected: Sequence[TrainingExample],
    config: CloudTrainConfig,
    prompt_format: str,
    on_stage: StageCallback | None,
) -> list[TrainingExample]:
    """The rejected examples a vote of the base model's samples labels (none without a vote)."""
    if not rejected or config.relabel_samples <= 0:
        return []
    if on_stage is not None:
        on_stage(
            f"relabeling {len(rejected)} answers by a vote of {config.relabel_samples} samples each"
        )
    base.model.eval()
    relabeled = relabel(
        base.model, base.tokenizer, rejected, prompt_format,
        samples=config.relabel_samples, temperature=config.relabel_temperature,
        device=base.device, min_share=config.relabel_min_share,
    )  # fmt: skip
    log.info("relabeled %d of %d records", len(relabeled), len(rejected))
    return relabeled


def _synthesize(
    base: _Base,
    examples: list[TrainingExample],
    config: CloudTrainConfig,
    prompt_format: str,
    on_stage: StageCallback | None,
    knowledge: KnowledgeBase | None,
    top_k: int,
    min_score: float,
) -> list[TrainingExample]:
    """Questions written from the knowledge base and answered by a vote (none unless
    ``config.synthesize``, a knowledge base and a vote are all there)."""
    if not (config.synthesize and knowledge is not None and config.relabel_samples > 0):
        return []
    from edgecloud.cloud.train._synthesize import synthesize_examples

    if on_stage is not None:
        on_stage("writing questions from the knowledge base")
    base.model.eval()
    synthetic, report = synthesize_examples(
        base.model, base.tokenizer, knowledge, examples,
        per_passage=config.synthesize_per_passage, samples=config.relabel_samples,
        temperature=config.relabel_temperature, prompt_format=prompt_format,
        device=base.device, top_k=top_k, min_score=min_score, seed=config.seed,
        time_budget_s=config.synthesize_budget_s,
    )  # fmt: skip
    log.info("synthesized %d questions from %d passages (%d written) in %.0f s; dropped: %s",
             report.kept, report.passages, report.candidates, report.seconds,
             report.dropped_by_reason)  # fmt: skip
    return synthetic


def _prepare(
    tokenizer: Any,
    examples: list[TrainingExample],
    config: CloudTrainConfig,
    synthetic: Sequence[TrainingExample] = (),
) -> _Data:
    """The held-out split, the canary pool, and the training rows (prefix stripped);
    ``synthetic`` examples are trained on only."""
    train, holdout = split_holdout(examples, config.holdout_fraction, config.seed)
    pool = canary_pool(train)  # full prompts, as devices send them
    train = [*train, *synthetic]
    shared = common_prompt_prefix(examples) if config.strip_common_prefix else ""
    if shared:
        log.info("training without the %d-character prompt prefix all records share", len(shared))
        train = strip_prefix(train, shared)
    items = [encode(tokenizer, ex, config.max_length) for ex in train]
    passages = unique_passages(train) if config.include_passages else []
    items += [encode_text(tokenizer, p, config.max_length) for p in passages]
    held_items = [encode(tokenizer, ex, config.max_length) for ex in holdout]
    return _Data(train, holdout, pool, items, passages, held_items)


def _evaluate(
    base: _Base, model: Any, data: _Data, evaluate_exact: bool
) -> tuple[float | None, float | None]:
    """(answer loss, exact-answer rate) of ``model`` on the held-out examples; None: not
    measured."""
    if not data.held_items:
        return None, None
    loss = answer_loss(model, data.held_items, base.pad_id, base.torch, base.device)
    if not evaluate_exact:
        return loss, None
    return loss, exact_rate(model, base.tokenizer, data.holdout, base.device)


def _apply_lora(model: Any, config: CloudTrainConfig) -> Any:
    """``model`` with LoRA layers (peft) on ``config.target_modules``."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft types it int; floats work
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # e.g. a target module the model does not have
        raise InvalidRequestError(f"cannot apply LoRA: {exc}") from exc


def _fit(
    base: _Base,
    model: Any,
    items: list[Encoded],
    config: CloudTrainConfig,
    report: TrainReport,
    progress: TrainProgress | None,
) -> None:
    """``config.epochs`` passes of AdamW over ``items``; steps and losses go to ``report``."""
    torch = base.torch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(config.seed)
    per_epoch = math.ceil(len(items) / config.batch_size)
    total = per_epoch * config.epochs
    model.train()
    epoch_losses = []
    for _epoch in range(config.epochs):
        losses = []
        for batch in batches(items, config.batch_size, rng):
            total_loss, n_tokens = loss_sum(
                model,
                collate(batch, base.pad_id, torch, base.device),
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
