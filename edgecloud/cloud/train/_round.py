"""One round of the learning loop: records → LoRA → GGUF + peft → signed version → rollout.

``edgecloud cloud train`` and ``bench/learning_loop.py`` both run
:func:`run_round`. Each stage reports itself through ``on_stage`` and training
reports every optimizer step through ``progress``, so a person watching sees
where a round of several minutes is.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgecloud.cloud._settings import CloudSettings
from edgecloud.cloud.train._base import base_model
from edgecloud.cloud.train._calibrate import CalibrationResult, calibrate
from edgecloud.cloud.train._examples import TrainingExample, examples_from_records
from edgecloud.cloud.train._lora import (
    LoraResult,
    StageCallback,
    TrainProgress,
    TrainReport,
    train_lora,
)
from edgecloud.cloud.train._publish import load_signing_key, publish_version
from edgecloud.cloud.train._relabel import check_replay
from edgecloud.cloud.train._scope import fit_scope
from edgecloud.cloud.train._window import read_records
from edgecloud.errors import InvalidRequestError

if TYPE_CHECKING:
    from edgecloud.adapters._manifest import AdapterScope
    from edgecloud.cloud._knowledge import KnowledgeBase

__all__ = ["RoundResult", "run_round"]

log = logging.getLogger("edgecloud.cloud.train")


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
    calibration: CalibrationResult | None = None
    """The version's thresholds and what was measured to fit them (None: not calibrated)."""
    refused: str | None = None
    """Why the round did not publish although asked to (device-plus-cloud got worse)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)


class _Stages:
    """Times a round's stages and tells ``on_stage`` as each starts."""

    def __init__(self, on_stage: StageCallback | None) -> None:
        self._on_stage = on_stage
        self._current: tuple[str, float] | None = None
        self.seconds: dict[str, float] = {}

    def start(self, name: str, text: str) -> None:
        """End the running stage and start ``name``, described to the watcher as ``text``."""
        self._end()
        self._current = (name, time.perf_counter())
        self.tell(text)

    def tell(self, text: str) -> None:
        """Describe something to the watcher without starting a stage."""
        if self._on_stage is not None:
            self._on_stage(text)

    def finish(self) -> dict[str, float]:
        """End the running stage; the seconds each stage took."""
        self._end()
        return self.seconds

    def _end(self) -> None:
        if self._current is not None:
            name, started = self._current
            self.seconds[name] = time.perf_counter() - started
            self._current = None


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
        out_dir: gets ``peft/`` (safetensors for the cloud's torch backend, and
            ``train_report.json``), ``adapter.gguf`` (llama.cpp LoRA, for devices) and
            ``scope.json`` when a scope was fitted.
        since, until: the record window (``received_at``, Unix seconds; see
            :func:`edgecloud.cloud.train.parse_since`).
        examples: train on these instead of reading records (evaluation runs).
        publish: sign the version into the registry and roll it out.
        rollout_percent: share of devices offered the version (100 promotes it).
        base_gguf: the GGUF the devices run (see :func:`edgecloud.cloud.train.base_model`).
        progress: called after each optimizer step.
        on_stage: called as each stage starts.

    Raises:
        InvalidRequestError: too few usable records (``cloud.train.min_records``).
        ConfigError: no signing key to publish with, or no base GGUF.
    """
    from edgecloud.adapters._gguf import export_lora_gguf

    cfg = settings.cloud.train
    stages = _Stages(on_stage)
    key = load_signing_key(settings) if publish else None  # fail before training
    stages.start("records", "reading escalation records")
    rejected: list[TrainingExample] = []
    if examples is None:
        records = read_records(settings, since, until)
        n_records = len(records)
        examples, rejected = examples_from_records(
            records,
            require_grounded=cfg.require_grounded,
            relabel_all=cfg.relabel_all and cfg.relabel_samples > 0,
        )
    else:
        n_records = len(examples)
    examples, wrong, knowledge = _check_replay(settings, examples, stages)
    rejected += wrong
    candidates = len(examples) + (len(rejected) if cfg.relabel_samples > 0 else 0)
    if candidates < cfg.min_records:
        raise InvalidRequestError(
            f"{candidates} usable examples from {n_records} records; a round needs at "
            f"least {cfg.min_records} (cloud.train.min_records)"
        )
    stages.start("base", "loading the base model")
    model_dir, device_gguf, base_sha, arch = base_model(settings, base_gguf)
    stages.start("train", f"training from {len(examples)} examples ({len(rejected)} to relabel)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.synthesize and knowledge is None:
        from edgecloud.cloud._server import load_knowledge

        knowledge = load_knowledge(settings.cloud)
    kcfg = settings.cloud.knowledge
    trained = train_lora(
        model_dir, examples, cfg, out_dir / "peft", progress=progress, rejected=rejected,
        prompt_format=settings.cloud.model.prompt_format, on_stage=on_stage,
        knowledge=knowledge, knowledge_top_k=kcfg.top_k, knowledge_min_score=kcfg.min_score,
    )  # fmt: skip
    trained.report.replay_contradicted = len(wrong)
    scope = None
    if cfg.scope:
        stages.start("scope", "fitting the adapter's scope (which requests it is for)")
        # What the adapter learned (records the vote left out are not), against what
        # was replayed as it was.
        encoder = knowledge.encoder if knowledge is not None else None  # one ONNX session
        scope = fit_scope(
            trained.examples, threshold=cfg.scope_threshold, encoder=encoder,
            inside=cfg.scope_inside,
        )  # fmt: skip
        if scope is not None:
            (out_dir / "scope.json").write_text(scope.model_dump_json(indent=1))
    stages.start("export", "exporting the llama.cpp LoRA GGUF")
    gguf = export_lora_gguf(trained.peft_dir, out_dir / "adapter.gguf", architecture=arch)
    result = RoundResult(trained.report, out_dir, gguf, trained.peft_dir, n_records, scope=scope)
    if cfg.calibration.enabled:
        stages.start("calibrate", "calibrating the version's escalation thresholds")
        result.calibration = calibrate(
            cfg, base_gguf=device_gguf, adapter_gguf=gguf, holdout=trained.holdout,
            canary=trained.report.canary, scope=scope, trained=_trained(trained),
            encoder=knowledge.encoder if knowledge is not None else None, on_stage=on_stage,
        )  # fmt: skip
        trained.report.canary = result.calibration.canary
        _write_calibration(out_dir / "calibration.json", result.calibration)
        result.refused = result.calibration.refused
        if result.refused is not None:
            stages.tell(f"refused: {result.refused}")
    if key is not None and result.refused is None:
        stages.start("publish", "signing and publishing")
        result.version = publish_version(
            settings, key, gguf=gguf, peft_dir=trained.peft_dir, base_sha256=base_sha,
            architecture=arch, report=trained.report, scope=scope, since=since, until=until,
            records=n_records, rollout_percent=rollout_percent,
            calibration=result.calibration.calibration if result.calibration else None,
        )  # fmt: skip
        result.rollout_percent = rollout_percent
    result.stage_seconds = stages.finish()
    return result


def _trained(trained: LoraResult) -> list[TrainingExample]:
    """The examples the adapter was trained on (not the held-out ones)."""
    held = set(trained.holdout)
    return [ex for ex in trained.examples if ex not in held]


def _write_calibration(path: Path, result: CalibrationResult) -> None:
    cal = result.calibration
    path.write_text(json.dumps({
        "calibration": cal.model_dump(mode="json") if cal is not None else None,
        "refused": result.refused,
        "measured": result.measured,
        "rows": result.rows,
    }, indent=1, default=str))  # fmt: skip


def _check_replay(
    settings: CloudSettings, examples: list[TrainingExample], stages: _Stages
) -> tuple[list[TrainingExample], list[TrainingExample], KnowledgeBase | None]:
    """(examples to keep, replayed answers to relabel, the knowledge base checked against).

    Checks only when ``cloud.train.check_replay``, a vote to send them to, replayed
    examples and a knowledge base are all there.
    """
    cfg = settings.cloud.train
    if not (cfg.check_replay and cfg.relabel_samples > 0 and any(ex.replay for ex in examples)):
        return examples, [], None
    from edgecloud.cloud._server import load_knowledge

    knowledge = load_knowledge(settings.cloud)
    if knowledge is None:
        skipped = ("replayed answers not checked: no knowledge base to check them against "
                   "(cloud.knowledge.directory, or cloud train --knowledge DIR)")  # fmt: skip
        log.warning("%s", skipped)
        stages.tell(skipped)
        return examples, [], None
    stages.start("replay", "checking replayed answers against the knowledge base")
    keep, wrong = check_replay(
        examples, knowledge, top_k=settings.cloud.knowledge.top_k,
        min_score=settings.cloud.knowledge.min_score,
    )  # fmt: skip
    if wrong:
        stages.tell(f"{len(wrong)} replayed answers contradict the knowledge base")
    return keep, wrong, knowledge
