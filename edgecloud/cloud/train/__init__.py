"""Distilling the cloud's answers into LoRA adapters for the devices, a round at a time.

A round reads the escalation records of a window (:func:`parse_since`), turns
them into examples, relabels the answers it cannot trust by a vote of samples,
trains a LoRA on the device's own base model (:func:`train_lora`), fits the
adapter's scope, exports the llama.cpp GGUF and, when asked, signs it into the
registry and rolls it out (:func:`run_round`). Progress comes through callbacks
(``on_stage`` as each stage starts, ``progress`` after each optimizer step);
rendering it is the caller's.

Nothing heavy loads on import: torch, transformers and peft load when training starts.

Examples:
    >>> import time
    >>> from pathlib import Path
    >>> from edgecloud.config import Settings
    >>> from edgecloud.cloud.train import parse_since, run_round
    >>> settings = Settings.load("cloud.toml")                              # doctest: +SKIP
    >>> now = time.time()
    >>> result = run_round(settings, Path("round"), since=parse_since("24h", now),
    ...                    until=now, publish=True, on_stage=print)      # doctest: +SKIP
"""

from __future__ import annotations

from edgecloud.cloud.train._base import base_model
from edgecloud.cloud.train._examples import TrainingExample
from edgecloud.cloud.train._lora import (
    LoraResult,
    StageCallback,
    TrainProgress,
    TrainReport,
    train_lora,
)
from edgecloud.cloud.train._round import RoundResult, run_round
from edgecloud.cloud.train._window import parse_since

__all__ = [
    "LoraResult",
    "RoundResult",
    "StageCallback",
    "TrainProgress",
    "TrainReport",
    "TrainingExample",
    "base_model",
    "parse_since",
    "run_round",
    "train_lora",
]
