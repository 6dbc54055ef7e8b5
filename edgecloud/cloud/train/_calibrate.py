"""A version's escalation thresholds, fitted on what the round held out, as devices run it.

A router calibrated for the base model does not fit the adapted one: trained on a
domain, the adapter is confident there, right or not, and a device keeping the
base model's thresholds would stop asking exactly when it has learned to mix up
its facts. After export the round answers its held-out examples (never trained
on) with llama.cpp, the base GGUF and the exported LoRA GGUF, the way devices will:

1. with the base model and the devices' own thresholds (``device_*`` settings):
   what the system does today;
2. with the adapter, for the requests its scope gives it: the per-token
   logprobs are fitted (:func:`edgecloud.router.fit_wrong_rate`) to the fewest
   escalations that leave at most ``target_wrong_rate`` of the answers wrong
   and unescalated. Cross-fitted on two halves, so the figures it reports are
   for answers the thresholds were not fitted on;
3. the accuracy of device-plus-cloud, before and after, on the domain (held-out
   escalations) and the general examples (held-out replayed answers), with the
   cloud's labels as the reference for what an escalation gets. A version that
   would make either worse is refused (``refuse_regression``).

The canary gets the decisions of the fitted thresholds on its prompts, so a device
whose runtime disagrees with this measurement rolls the version back.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.cloud._settings import CloudCalibrationConfig, CloudTrainConfig
from edgecloud.cloud.train._examples import TrainingExample
from edgecloud.common.text import same_answer
from edgecloud.errors import ConfigError

if TYPE_CHECKING:
    from edgecloud.adapters._manifest import AdapterCalibration, AdapterScope, AnswerMemory
    from edgecloud.common.encoder import SentenceEncoder
    from edgecloud.router import WrongRateFit

__all__ = ["CalibrationResult", "calibrate"]

log = logging.getLogger("edgecloud.cloud")

_MAX_MEMORY = 16_384
"""Trained examples an answer memory holds at most (about 12 kB each as JSON)."""

_MARGIN = 0.1
"""A canary decision is checked only when its score is this far from the threshold."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """One greedy answer as a device gives it, and its per-token logprobs."""

    text: str
    logprobs: tuple[float, ...]
    entropies: tuple[float, ...]


@dataclass(slots=True)
class _Row:
    example: TrainingExample
    in_scope: bool
    base: _Answer
    adapted: _Answer
    base_escalates: bool
    """The devices' own thresholds on the base model's answer."""
    adapted_base_escalates: bool
    """The devices' own thresholds on the adapter's answer (a version with no calibration)."""
    escalates: bool = False
    """The adapter answers it (in scope) and thresholds fitted without it escalate."""
    shipped_escalates: bool = False
    """The adapter answers it and the version's thresholds (fitted on all) escalate."""
    unlearned: bool = False
    """The adapter's answer is not what it learned for the nearest trained prompts."""
    nearest: float = 1.0
    """Similarity of the nearest trained prompt (the answer memory's)."""

    @property
    def group(self) -> str:
        return "general" if self.example.replay else "domain"

    def right(self, answer: _Answer) -> bool:
        return same_answer(answer.text, self.example.answer)


@dataclass(slots=True)
class CalibrationResult:
    """What :func:`calibrate` measured and decided."""

    calibration: AdapterCalibration | None
    canary: list[dict[str, Any]]
    """The round's canary, as the device runs it: items llama.cpp answers right, each
    with its stop sequences and the fitted thresholds' decision where clear."""
    refused: str | None = None
    """Why the version must not be published (device-plus-cloud got worse); None: fine."""
    measured: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Per held-out example: group, scope, answers, rightness and decisions (reports)."""


def calibrate(
    config: CloudTrainConfig,
    *,
    base_gguf: Path,
    adapter_gguf: Path,
    holdout: Sequence[TrainingExample],
    canary: Sequence[dict[str, Any]],
    scope: AdapterScope | None,
    trained: Sequence[TrainingExample] = (),
    encoder: SentenceEncoder | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """Measure the held-out examples as devices run them, fit the version's thresholds,
    and check that device-plus-cloud does not get worse (see the module doc).

    Args:
        config: ``cloud.train`` (``calibration``, ``threads``, ``seed``).
        base_gguf: the GGUF the devices run.
        adapter_gguf: the round's exported LoRA GGUF.
        holdout: examples the adapter was not trained on; replayed ones are the
            general examples, the others the domain.
        canary: the round's canary items (``prompt``, ``expect``, ``stop``).
        scope: the version's scope (None: the adapter answers every request).
        trained: the examples the adapter was trained on: its answer memory
            (``calibration.memory``).
        encoder: the sentence encoder of the scope and the memory (the embedded
            default if None).

    Raises:
        ConfigError: llama-cpp-python is not installed.
    """
    from edgecloud.adapters._manifest import AdapterCalibration

    cal = config.calibration
    backend = _open_backend(base_gguf, adapter_gguf, config.threads)
    try:
        if on_stage is not None:
            on_stage(f"measuring {len(holdout)} held-out answers with and without the adapter")
        if encoder is None and (scope is not None or (cal.memory and trained)):
            from edgecloud.common.encoder import SentenceEncoder

            encoder = SentenceEncoder()
        in_scope = _in_scope(holdout, scope, encoder)
        base = [_answer(backend, ex, use_adapter=False) for ex in holdout]
        adapted = [_answer(backend, ex, use_adapter=True) for ex in holdout]
        canary_answers = [_canary_answer(backend, item) for item in canary]
    finally:
        backend.close()
    rows = [
        _Row(ex, s, b, a, _base_escalates(config, b), _base_escalates(config, a))
        for ex, s, b, a in zip(holdout, in_scope, base, adapted, strict=True)
    ]
    scoped = [r for r in rows if r.in_scope]
    fit = None
    memory = None
    checks = False  # the memory's answer checks
    teacher = 0
    if len(scoped) >= cal.min_examples:
        fit = _fit(cal.target_wrong_rate, cal.windows, scoped)
        if cal.memory and trained and encoder is not None:
            memory = _memory(trained, scope, encoder, cal.memory_margin)
            _check_memory(memory, scoped, encoder)
            floor = _floor(scoped, memory.margin)
            chosen = _with_memory(cal, scoped, fit, floor)
            within = [r for r in scoped if r.nearest >= floor]
            if chosen is not None:
                fit, teacher = chosen
            elif within:  # the thresholds alone, on what the adapter still answers
                fit = _fit(cal.target_wrong_rate, cal.windows, within)
            checks = chosen is not None
            # Either way the floor keeps: nothing it learned goes to the base model.
            memory = memory.model_copy(update={"min_similarity": floor, "check_answers": checks})
            for r in scoped:
                r.in_scope = r.nearest >= floor
            scoped = within
        _cross_fit(config, scoped, fit, checks)
        for r in scoped:
            r.shipped_escalates = _escalates(fit, r, checks)
    else:
        log.warning("%d held-out answers by the adapter (< %d): the version carries no "
                    "calibration and devices keep their own thresholds", len(scoped),
                    cal.min_examples)  # fmt: skip
    measured = _measure(rows, fit is not None)
    calibration = None
    if fit is not None:
        n_fit = max(len(scoped), 1)
        measured["fit_escalation_rate"] = sum(r.shipped_escalates for r in scoped) / n_fit
        measured["fit_wrong_unescalated_rate"] = (
            sum(not r.shipped_escalates and not r.right(r.adapted) for r in scoped) / n_fit
        )
        measured["taught_wrong"] = float(teacher)
        calibration = AdapterCalibration(
            window=fit.window,
            min_mean_logprob=max(fit.min_mean_logprob, -1e9),
            min_tokens=fit.min_tokens,
            target_wrong_rate=cal.target_wrong_rate,
            examples=len(scoped),
            memory=memory,
            measured={k: v for k, v in measured.items() if math.isfinite(v)},
        )
    refused = _regression(measured) if cal.refuse_regression else None
    return CalibrationResult(
        calibration,
        _canary_items(canary, canary_answers, fit),
        refused,
        measured,
        [_report_row(r) for r in rows],
    )


def _open_backend(base_gguf: Path, adapter_gguf: Path, threads: int | None) -> Any:
    try:
        from edgecloud.backends.llama_cpp import LlamaCppBackend

        backend = LlamaCppBackend(base_gguf, n_threads=threads or _threads())
    except ImportError as exc:
        raise ConfigError(
            "calibrating a version measures it as devices run it, with llama.cpp: install "
            "llama-cpp-python (pip install 'edgecloud[device]'), or turn "
            "cloud.train.calibration.enabled off"
        ) from exc
    backend.set_adapter(adapter_gguf)
    return backend


def _threads() -> int:
    from edgecloud.common.settings import default_threads

    return default_threads()


def _in_scope(
    examples: Sequence[TrainingExample], scope: AdapterScope | None, encoder: Any
) -> list[bool]:
    """Whether a device would answer each example with the adapter."""
    if scope is None or not examples:
        return [True] * len(examples)
    if encoder is None:
        from edgecloud.common.encoder import SentenceEncoder

        encoder = SentenceEncoder()
    vectors = encoder.encode([scope.text(ex.prompt) for ex in examples])
    return [scope.applies(v.tolist()) for v in vectors]


def _answer(backend: Any, ex: TrainingExample, *, use_adapter: bool) -> _Answer:
    from edgecloud.types import Chunk, SamplingParams

    budget = len(backend.tokenize(ex.answer, add_bos=False)) + 8
    stop = (ex.terminator,) if ex.terminator else ()
    params = SamplingParams(temperature=0.0, max_tokens=budget, stop=stop)
    chunks = [
        ev for ev in backend.stream(ex.prompt, params, use_adapter=use_adapter)
        if isinstance(ev, Chunk)
    ]  # fmt: skip
    return _Answer(
        "".join(c.text for c in chunks),
        tuple(c.logprob for c in chunks),
        tuple(c.entropy for c in chunks),
    )


def _canary_answer(backend: Any, item: dict[str, Any]) -> _Answer:
    ex = TrainingExample(item["prompt"], item["expect"], terminator=(item.get("stop") or [None])[0])
    return _answer(backend, ex, use_adapter=True)


def _base_escalates(config: CloudTrainConfig, answer: _Answer) -> bool:
    from edgecloud.router import window_extremes

    cal = config.calibration
    lo, _ = window_extremes(answer.logprobs, answer.entropies, cal.device_window,
                            cal.device_min_tokens)  # fmt: skip
    return lo < cal.device_min_mean_logprob


def _memory(
    trained: Sequence[TrainingExample], scope: AdapterScope | None, encoder: Any, margin: float
) -> AnswerMemory:
    """The answer memory of what was trained (the prompts read as the scope reads them)."""
    from edgecloud.adapters._manifest import AnswerMemory
    from edgecloud.cloud.train._examples import common_prompt_prefix

    rows = [ex for ex in trained if ex.answer.strip()][:_MAX_MEMORY]
    prefix = scope.strip_prefix if scope is not None else common_prompt_prefix(rows)
    texts = [ex.prompt[len(prefix) :] if ex.prompt.startswith(prefix) else ex.prompt
             for ex in rows]  # fmt: skip
    return AnswerMemory.build(encoder.identity, prefix, encoder.encode(texts),
                              [ex.answer.strip()[:1024] for ex in rows], margin)  # fmt: skip


def _check_memory(memory: AnswerMemory, rows: Sequence[_Row], encoder: Any) -> None:
    """Mark the rows whose adapted answer is not what was learned for the nearest prompts."""
    if not rows:
        return
    vectors = encoder.encode([memory.text(r.example.prompt) for r in rows])
    for r, vec in zip(rows, vectors, strict=True):
        r.unlearned = not memory.consistent(vec.tolist(), r.adapted.text)
        r.nearest = memory.nearest(vec.tolist())


def _fit(
    target: float, windows: Sequence[int], rows: Sequence[_Row], *, memory: bool = False
) -> WrongRateFit:
    from edgecloud.router import fit_wrong_rate

    return fit_wrong_rate(
        [(r.adapted.logprobs, r.right(r.adapted)) for r in rows], target, windows=windows,
        forced=[memory and r.unlearned for r in rows],
    )  # fmt: skip


def _floor(rows: Sequence[_Row], margin: float) -> float:
    """The similarity to the nearest trained prompt below which a request is nothing the
    adapter learned: just under the least similar held-out domain example (other
    phrasings of what was trained), at most 0.8; -1 (none) without domain examples."""
    near = [r.nearest for r in rows if not r.example.replay]
    return max(-1.0, min(min(near) - margin, 0.8)) if near else -1.0


def _with_memory(
    cal: CloudCalibrationConfig, rows: Sequence[_Row], alone: WrongRateFit, floor: float
) -> tuple[WrongRateFit, int] | None:
    """The fit with the answer memory's escalations, and how many wrong answers the
    memory took for learned, when it reaches the target at no more escalations than
    ``alone`` (or ``alone`` misses it); None: the thresholds alone are better. Kept on a
    tie: it also catches mix-ups the held-out examples lack.

    A wrong answer the memory takes for learned (the nearest trained prompt was taught
    that answer: another entity's question in the same words, or a label the vote got
    wrong) is left to the thresholds, which are fitted to catch it like any other.
    Requests below ``floor`` are answered by the base model at the devices' thresholds.
    """
    beyond = [r for r in rows if r.nearest < floor]  # the base model answers these
    within = [r for r in rows if r.nearest >= floor]
    fit = _fit(cal.target_wrong_rate, cal.windows, within or rows, memory=True)
    cost = (sum(_escalates(fit, r, True) for r in within)
            + sum(r.base_escalates for r in beyond)) / len(rows)  # fmt: skip
    missed = alone.wrong_unescalated_rate > cal.target_wrong_rate
    if fit.wrong_unescalated_rate <= cal.target_wrong_rate and (
        cost <= alone.escalation_rate or missed
    ):
        return fit, sum(_taught(r) for r in within)  # on a tie too (see the docstring)
    return None


def _taught(r: _Row) -> bool:
    """The adapter answered what the nearest trained prompt was taught, and that is not
    the held-out label (reported as ``taught_wrong``)."""
    return not r.unlearned and not r.right(r.adapted)


def _escalates(fit: WrongRateFit, r: _Row, memory: bool) -> bool:
    return (memory and r.unlearned) or fit.escalates(r.adapted.logprobs, r.adapted.entropies)


def _cross_fit(
    config: CloudTrainConfig, rows: Sequence[_Row], full: WrongRateFit, memory: bool
) -> None:
    """Each row's decision by thresholds fitted on the other half (the full fit when
    that half is too small), so the reported rates are out of sample."""
    cal = config.calibration
    folds: list[list[_Row]] = [[], []]
    for r in rows:
        key = f"{config.seed}:calibration:{r.example.record_id or r.example.prompt}".encode()
        folds[hashlib.sha256(key).digest()[0] & 1].append(r)
    for i, fold in enumerate(folds):
        other = folds[1 - i]
        fit = (
            _fit(cal.target_wrong_rate, cal.windows, other, memory=memory)
            if len(other) >= cal.min_examples
            else full
        )
        for r in fold:
            r.escalates = _escalates(fit, r, memory)


def _measure(rows: Sequence[_Row], calibrated: bool) -> dict[str, float]:
    """Rates before and after, per group (domain, general); nan where a group is empty."""
    out: dict[str, float] = {}
    for group in ("domain", "general"):
        mine = [r for r in rows if r.group == group]
        n = len(mine)
        out[f"{group}_examples"] = float(n)
        before = [(r.base_escalates, r.right(r.base)) for r in mine]
        after = []
        for r in mine:
            if not r.in_scope:
                after.append((r.base_escalates, r.right(r.base)))
            elif calibrated:
                after.append((r.escalates, r.right(r.adapted)))
            else:  # no calibration: devices keep their thresholds for the adapter's answers
                after.append((r.adapted_base_escalates, r.right(r.adapted)))
        for name, pairs in (("before", before), ("after", after)):
            esc = sum(e for e, _ in pairs)
            out[f"{group}_{name}_escalation_rate"] = esc / n if n else math.nan
            out[f"{group}_{name}_local_right_rate"] = (
                sum(ok and not e for e, ok in pairs) / n if n else math.nan
            )
            out[f"{group}_{name}_wrong_unescalated_rate"] = (
                sum(not ok and not e for e, ok in pairs) / n if n else math.nan
            )
            out[f"{group}_{name}_system_accuracy"] = (
                sum(ok or e for e, ok in pairs) / n if n else math.nan
            )
        out[f"{group}_in_scope_rate"] = sum(r.in_scope for r in mine) / n if n else math.nan
    return out


def _regression(measured: dict[str, float]) -> str | None:
    for group in ("domain", "general"):
        before = measured.get(f"{group}_before_system_accuracy", math.nan)
        after = measured.get(f"{group}_after_system_accuracy", math.nan)
        if math.isfinite(before) and math.isfinite(after) and after < before - 1e-9:
            return (
                f"device-plus-cloud would answer {after:.1%} of the held-out {group} examples "
                f"right, down from {before:.1%}"
            )
    return None


def _canary_items(
    canary: Sequence[dict[str, Any]], answers: Sequence[_Answer], fit: WrongRateFit | None
) -> list[dict[str, Any]]:
    """The canary items llama.cpp with the adapter answers right (others would fail on a
    device for reasons of quantization, not of a broken swap), with the fitted
    thresholds' decision where the score is clear of the threshold."""
    from edgecloud.router import window_extremes

    out = []
    for item, answer in zip(canary, answers, strict=True):
        if item["expect"].lower() not in answer.text.lower():
            continue
        kept = dict(item)
        if fit is not None and answer.logprobs:
            lo, _ = window_extremes(answer.logprobs, answer.entropies, fit.window, fit.min_tokens)
            if abs(lo - fit.min_mean_logprob) >= _MARGIN:
                kept["escalate"] = lo < fit.min_mean_logprob
        out.append(kept)
    return out


def _report_row(r: _Row) -> dict[str, Any]:
    return {
        "group": r.group,
        "prompt_tail": r.example.prompt[-120:],
        "label": r.example.answer,
        "in_scope": r.in_scope,
        "base": r.base.text,
        "base_right": r.right(r.base),
        "base_escalates": r.base_escalates,
        "adapted": r.adapted.text,
        "adapted_right": r.right(r.adapted),
        "escalates": r.escalates,
        "shipped_escalates": r.shipped_escalates,
        "unlearned": r.unlearned,
        "nearest": r.nearest,
        "adapted_min_logprob": min(r.adapted.logprobs, default=0.0),
    }
