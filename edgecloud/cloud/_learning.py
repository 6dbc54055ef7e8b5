"""One round of the learning loop: records → LoRA → GGUF + peft → signed version → rollout.

``edgecloud cloud train`` and ``bench/learning_loop.py`` both run
:func:`run_round`. Each stage reports itself through ``on_stage`` and training
reports every optimizer step through ``progress``, so a person watching sees
where a round of several minutes is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.cloud._settings import CloudSettings
from edgecloud.cloud._trainer import (
    TrainingExample,
    TrainProgress,
    TrainReport,
    common_prompt_prefix,
    examples_from_records,
    train_lora,
)
from edgecloud.errors import ConfigError, InvalidRequestError

__all__ = ["RoundResult", "base_model", "check_replay", "fit_scope", "run_round"]

if TYPE_CHECKING:
    from edgecloud.adapters._manifest import AdapterScope
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.common.encoder import SentenceEncoder

log = logging.getLogger("edgecloud.cloud")

StageCallback = Callable[[str], None]
"""Called with a short description as each stage of a round starts."""


@dataclass(slots=True)
class RoundResult:
    """What one round produced; ``version`` is None unless it published."""

    report: TrainReport
    out_dir: Path
    gguf: Path
    peft_dir: Path
    records: int
    version: int | None = None
    rollout_percent: float | None = None
    scope: AdapterScope | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)


def base_model(
    settings: CloudSettings, base_gguf: Path | None = None
) -> tuple[Path, Path, str, str]:
    """(HF model dir to train, base GGUF the devices run, its sha256, its architecture).

    The base GGUF is ``base_gguf``, else ``cloud.model.path`` when it is a GGUF,
    else the embedded default; the HF directory is its cached dequantization
    (or ``cloud.model.path`` when that is a directory, which then needs
    ``base_gguf`` to say what the devices run).

    Raises:
        ConfigError: the cloud model is a directory and no base GGUF was named.
    """
    from edgecloud.cloud._torch import resolve_model_dir
    from edgecloud.common.files import sha256_file
    from edgecloud.common.models import ensure_default_model

    configured = settings.cloud.model.path
    if base_gguf is None:
        if configured is not None and configured.expanduser().is_dir():
            raise ConfigError(
                "cloud.model.path is a model directory: name the GGUF the devices run "
                "(--base-gguf) so the adapter is bound to it"
            )
        base_gguf = (
            configured.expanduser()
            if configured is not None
            else ensure_default_model(settings.cache_dir)
        )
    if not base_gguf.is_file():
        raise ConfigError(f"base GGUF not found: {base_gguf}")
    model_dir, _ = resolve_model_dir(settings)
    return model_dir, base_gguf, sha256_file(base_gguf), _architecture(base_gguf)


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
    import dataclasses

    from edgecloud.cloud._prompting import question_of
    from edgecloud.cloud._trainer import grounded

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


def fit_scope(
    examples: list[TrainingExample],
    *,
    threshold: float = 0.5,
    encoder: SentenceEncoder | None = None,
) -> AdapterScope | None:
    """The requests an adapter trained on ``examples`` is for, or None when it cannot tell.

    Inside: the prompts the adapter learned an answer for (escalations, and replayed
    answers the knowledge base contradicted); outside: the replayed prompts
    (``device.log.replay_rate``: what the device already answered well). A logistic
    head (:class:`edgecloud.router.LearnedRouter`, the learned router's fit) on their
    sentence embeddings, without the prompt lines all examples share (few-shot
    examples say nothing about a request). None without examples of both kinds.
    """
    from edgecloud.adapters._manifest import AdapterScope
    from edgecloud.router import LearnedRouter

    inside = [ex.prompt for ex in examples if not ex.replay]
    outside = [ex.prompt for ex in examples if ex.replay]
    if not inside or not outside:
        log.warning("no adapter scope: it needs escalated and replayed records (%d and %d); "
                    "the adapter will answer every request", len(inside), len(outside))  # fmt: skip
        return None
    if encoder is None:
        from edgecloud.common.encoder import SentenceEncoder

        encoder = SentenceEncoder()
    prefix = common_prompt_prefix(examples)
    texts = [p[len(prefix) :] if p.startswith(prefix) else p for p in inside + outside]
    head = LearnedRouter.fit(encoder.encode(texts), [True] * len(inside) + [False] * len(outside))
    return AdapterScope(
        encoder=encoder.identity,
        strip_prefix=prefix,
        weights=tuple(float(w) for w in head.weights),
        bias=head.bias,
        threshold=threshold,
    )


def _architecture(gguf_path: Path) -> str:
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    field_ = reader.get_field("general.architecture")
    value = field_.contents() if field_ is not None else None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{gguf_path} has no general.architecture")
    return value


def run_round(
    settings: CloudSettings,
    out_dir: Path,
    *,
    since: float | None = None,
    until: float | None = None,
    examples: list[TrainingExample] | None = None,
    publish: bool = False,
    rollout_percent: float = 100.0,
    base_gguf: Path | None = None,
    progress: TrainProgress | None = None,
    on_stage: StageCallback | None = None,
) -> RoundResult:
    """Train on the records received in ``[since, until)``, export, and optionally publish.

    Args:
        settings: ``cloud.train`` (hyperparameters), ``cloud.records`` (where the
            records are), ``cloud.registry`` (where versions go and the signing key).
        out_dir: gets ``peft/`` (safetensors, for the cloud's torch backend),
            ``adapter.gguf`` (llama.cpp LoRA, for devices) and ``train_report.json``.
        since, until: the record window (``received_at``, Unix seconds).
        examples: train on these instead of reading records (evaluation runs).
        publish: sign the version into the registry and roll it out.
        rollout_percent: share of devices offered the version (100 promotes it).
        base_gguf: the GGUF the devices run (see :func:`base_model`).
        progress: called after each optimizer step.
        on_stage: called as each stage starts.

    Raises:
        InvalidRequestError: too few usable records (``cloud.train.min_records``).
        ConfigError: no signing key to publish with, or no base GGUF.
    """
    from edgecloud.adapters._gguf import export_lora_gguf
    from edgecloud.cloud._records import RecordStore
    from edgecloud.cloud._server import records_path

    cfg = settings.cloud.train
    stage_s: dict[str, float] = {}
    current: list[tuple[str, float]] = []

    def stage(name: str, text: str) -> None:
        now = time.perf_counter()
        if current:
            last, started = current.pop()
            stage_s[last] = now - started
        if name:
            current.append((name, now))
        if on_stage is not None and text:
            on_stage(text)

    key = None
    if publish:
        from edgecloud.adapters._signing import load_private_key

        if settings.cloud.registry.signing_key is None:
            raise ConfigError(
                "publishing needs cloud.registry.signing_key (make one: edgecloud adapters keygen)"
            )
        key = load_private_key(settings.cloud.registry.signing_key)  # fail before training

    stage("records", "reading escalation records")
    n_records = 0
    rejected: list[TrainingExample] = []
    wrong: list[TrainingExample] = []
    knowledge: KnowledgeBase | None = None
    if examples is None:
        store = RecordStore(records_path(settings.cloud, settings.cache_dir))
        try:
            records = [r for r in store.records(since) if until is None or r.received_at < until]
        finally:
            store.close()
        n_records = len(records)
        examples = examples_from_records(
            records,
            require_grounded=cfg.require_grounded,
            rejected=rejected,
            relabel_all=cfg.relabel_all and cfg.relabel_samples > 0,
        )
    else:
        n_records = len(examples)
    if cfg.check_replay and cfg.relabel_samples > 0 and any(ex.replay for ex in examples):
        from edgecloud.cloud._server import load_knowledge

        knowledge = load_knowledge(settings.cloud)
        if knowledge is not None:
            stage("replay", "checking replayed answers against the knowledge base")
            examples, wrong = check_replay(
                examples, knowledge, top_k=settings.cloud.knowledge.top_k,
                min_score=settings.cloud.knowledge.min_score,
            )  # fmt: skip
            rejected += wrong
            if on_stage is not None and wrong:
                on_stage(f"{len(wrong)} replayed answers contradict the knowledge base")
    candidates = len(examples) + (len(rejected) if cfg.relabel_samples > 0 else 0)
    if candidates < cfg.min_records:
        raise InvalidRequestError(
            f"{candidates} usable examples from {n_records} records; a round needs at "
            f"least {cfg.min_records} (cloud.train.min_records)"
        )
    stage("base", "loading the base model")
    model_dir, _gguf, base_sha, arch = base_model(settings, base_gguf)
    stage("train", f"training from {len(examples)} examples ({len(rejected)} to relabel)")
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_dir = out_dir / "peft"
    used: list[TrainingExample] = []
    report = train_lora(
        model_dir, examples, cfg, peft_dir, progress=progress, rejected=rejected,
        prompt_format=settings.cloud.model.prompt_format, on_stage=on_stage, used=used,
    )  # fmt: skip
    report.replay_contradicted = len(wrong)
    scope = None
    if cfg.scope:
        stage("scope", "fitting the adapter's scope (which requests it is for)")
        # What the adapter learned (records the vote left out are not), against what
        # was replayed as it was.
        encoder = knowledge.encoder if knowledge is not None else None  # one ONNX session
        scope = fit_scope(used, threshold=cfg.scope_threshold, encoder=encoder)
        if scope is not None:
            (out_dir / "scope.json").write_text(scope.model_dump_json(indent=1))
    stage("export", "exporting the llama.cpp LoRA GGUF")
    gguf_out = export_lora_gguf(peft_dir, out_dir / "adapter.gguf", architecture=arch)
    result = RoundResult(report, out_dir, gguf_out, peft_dir, n_records, scope=scope)
    if publish and key is not None:
        from edgecloud.adapters._registry import AdapterRegistry
        from edgecloud.cloud._server import registry_url

        stage("publish", "signing and publishing")
        registry = AdapterRegistry(registry_url(settings.cloud, settings.cache_dir))
        manifest = registry.publish(
            {
                "adapter.gguf": gguf_out,
                "peft/adapter_config.json": peft_dir / "adapter_config.json",
                "peft/adapter_model.safetensors": peft_dir / "adapter_model.safetensors",
            },
            key=key,
            adapter_id=cfg.adapter_id,
            base_model_sha256=base_sha,
            base_architecture=arch,
            rank=cfg.rank,
            alpha=cfg.alpha,
            target_modules=list(cfg.target_modules),
            data=_data(since, until, n_records, report),
            metrics=report.metrics(),
            canary=report.canary,
            scope=scope,
        )
        result.version = manifest.version
        registry.rollout(cfg.adapter_id, manifest.version, rollout_percent)
        result.rollout_percent = rollout_percent
    stage("", "")
    result.stage_seconds = stage_s
    return result


def _data(since: float | None, until: float | None, records: int, report: TrainReport) -> Any:
    def ts(value: float | None) -> datetime | None:
        return datetime.fromtimestamp(value, timezone.utc) if value is not None else None

    return {
        "since": ts(since),
        "until": ts(until if until is not None else time.time()),
        "records": records,
        "train": report.train,
        "holdout": report.holdout,
        "with_passages": report.passages > 0,
    }
