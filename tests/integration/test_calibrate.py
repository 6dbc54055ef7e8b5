"""A round's calibration, measured with llama.cpp as devices run the base and the adapter.

A random LoRA changes the base model's answers; labelled with the base model's own
answers, the adapter is wrong wherever it answers differently. The fitted
thresholds must escalate every such answer (target 0), the canary keeps only what
llama.cpp with the adapter answers, and a version with which device-plus-cloud
would answer fewer examples right than before is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecloud.cloud._settings import CloudCalibrationConfig, CloudTrainConfig
from edgecloud.cloud.train._calibrate import calibrate
from edgecloud.cloud.train._examples import TrainingExample
from tests.integration._randomlora import lora_gguf, peft_dir, torch_model

__all__ = ["lora_gguf", "peft_dir", "torch_model"]  # fixtures used here

pytestmark = pytest.mark.model

SHOTS = "Q: What is the capital of France?\nA: Paris\nQ: What colour is the sky?\nA: Blue\n"
QUESTIONS = [
    "What is the capital of Japan?", "What colour is grass?", "How many legs does a dog have?",
    "What is the capital of Italy?", "What colour is snow?", "How many days are in a week?",
    "What is the largest planet?", "What do bees make?",
]  # fmt: skip


def _config(**calibration: Any) -> CloudTrainConfig:
    return CloudTrainConfig(threads=2, calibration=CloudCalibrationConfig(**calibration))


def _examples(answers: list[str]) -> list[TrainingExample]:
    return [
        TrainingExample(
            f"{SHOTS}Q: {q}\nA:", a, terminator="\n", replay=i % 2 == 1, record_id=f"r{i}"
        )
        for i, (q, a) in enumerate(zip(QUESTIONS, answers, strict=True))
    ]


@pytest.fixture(scope="module")
def base_answers(default_gguf: Path, lora_gguf: Path) -> list[str]:
    """The base model's greedy answers, measured the way calibrate() measures them."""
    got = calibrate(
        _config(refuse_regression=False, min_examples=100), base_gguf=default_gguf,
        adapter_gguf=lora_gguf, holdout=_examples(["?"] * len(QUESTIONS)), canary=[],
        scope=None,
    )  # fmt: skip
    answers = [row["base"] for row in got.rows]
    assert all(a.strip() for a in answers), answers
    return answers


def test_the_fit_escalates_every_answer_the_adapter_gets_wrong(
    default_gguf: Path, lora_gguf: Path, base_answers: list[str]
) -> None:
    holdout = _examples(base_answers)
    never = {"prompt": holdout[0].prompt, "expect": "zzzz-never", "stop": ["\n"]}
    got = calibrate(
        _config(target_wrong_rate=0.0, min_examples=2, windows=[1, 2, 4]),
        base_gguf=default_gguf, adapter_gguf=lora_gguf, holdout=holdout, canary=[never],
        scope=None,
    )  # fmt: skip
    rows = got.rows
    assert [r["base_right"] for r in rows] == [True] * len(rows)  # labels are the base's
    wrong = [r for r in rows if not r["adapted_right"]]
    assert wrong, "the random adapter should change some answers"
    assert got.calibration is not None and got.calibration.examples == len(rows)
    assert got.measured["fit_wrong_unescalated_rate"] == 0.0
    assert all(r["shipped_escalates"] for r in wrong)
    # The figures are split into the domain (escalated) and general (replayed) examples.
    assert got.measured["domain_examples"] == got.measured["general_examples"] == 4
    assert got.measured["domain_before_system_accuracy"] == 1.0
    # An item llama.cpp with the adapter does not answer is no canary for a device.
    assert got.canary == []
    # One it does answer is kept, with its stop and, when clear, the router's decision.
    adapted = rows[1]["adapted"].strip()
    kept = calibrate(
        _config(target_wrong_rate=0.0, min_examples=2),
        base_gguf=default_gguf, adapter_gguf=lora_gguf, holdout=holdout,
        canary=[{"prompt": holdout[1].prompt, "expect": adapted, "stop": ["\n"]}], scope=None,
    )  # fmt: skip
    assert [c["expect"] for c in kept.canary] == [adapted]
    assert kept.canary[0]["stop"] == ["\n"]
    if "escalate" in kept.canary[0]:
        assert kept.canary[0]["escalate"] == rows[1]["shipped_escalates"]


def test_a_version_that_makes_the_system_worse_is_refused(
    default_gguf: Path, lora_gguf: Path, base_answers: list[str]
) -> None:
    # No calibration (too few examples for it) and devices that never escalate: the
    # adapter's changed answers go out wrong where the base model's were right.
    got = calibrate(
        _config(min_examples=100, device_min_mean_logprob=-1e6),
        base_gguf=default_gguf, adapter_gguf=lora_gguf, holdout=_examples(base_answers),
        canary=[], scope=None,
    )  # fmt: skip
    assert got.calibration is None
    assert got.refused is not None and "down from 100.0%" in got.refused
    # Calibrated, the same adapter escalates what it gets wrong and is not refused.
    fine = calibrate(
        _config(min_examples=2, target_wrong_rate=0.0, device_min_mean_logprob=-1e6),
        base_gguf=default_gguf, adapter_gguf=lora_gguf, holdout=_examples(base_answers),
        canary=[], scope=None,
    )  # fmt: skip
    shipped = [r for r in fine.rows if not r["adapted_right"]]
    assert shipped and all(r["shipped_escalates"] for r in shipped)


def test_calibration_config_defaults_match_the_device_router() -> None:
    from edgecloud.router._settings import RouterConfig

    cal, router = CloudCalibrationConfig(), RouterConfig()
    assert (cal.device_window, cal.device_min_mean_logprob, cal.device_min_tokens) == (
        router.window, router.min_mean_logprob, router.min_tokens)  # fmt: skip


def test_the_answer_memory_catches_what_the_adapter_did_not_learn(
    default_gguf: Path, lora_gguf: Path, base_answers: list[str]
) -> None:
    # Trained on these very prompts with the base model's answers: wherever the random
    # adapter answers otherwise, its answer is not what it learned for the nearest
    # prompt, and the memory alone escalates exactly those answers.
    examples = _examples(base_answers)
    got = calibrate(
        _config(target_wrong_rate=0.0, min_examples=2), base_gguf=default_gguf,
        adapter_gguf=lora_gguf, holdout=examples, canary=[], scope=None, trained=examples,
    )  # fmt: skip
    assert got.calibration is not None and got.calibration.memory is not None
    memory = got.calibration.memory
    assert len(memory.answers) == len(examples) and memory.strip_prefix == SHOTS
    wrong = [r["unlearned"] for r in got.rows]
    assert wrong == [not r["adapted_right"] for r in got.rows] and any(wrong)
    assert [r["shipped_escalates"] for r in got.rows] == wrong
    assert got.measured["fit_escalation_rate"] == sum(wrong) / len(wrong)
    # Without the memory the thresholds must catch them alone, at no lower cost.
    alone = calibrate(
        _config(target_wrong_rate=0.0, min_examples=2, memory=False), base_gguf=default_gguf,
        adapter_gguf=lora_gguf, holdout=examples, canary=[], scope=None, trained=examples,
    )  # fmt: skip
    assert alone.calibration is not None and alone.calibration.memory is None
    assert alone.measured["fit_escalation_rate"] >= got.measured["fit_escalation_rate"]
