"""What the in-process cloud tests share: the service's limits, a few-shot prompt, and
the model (float32) and knowledge base loaded once per test module."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgecloud.cloud import TorchBackend
from edgecloud.cloud._knowledge import KnowledgeBase
from edgecloud.common.encoder import SentenceEncoder
from edgecloud.config import Settings

T = TypeVar("T")
ROOT = Path(__file__).parents[2]
MANUAL = ROOT / "bench" / "data" / "fleet_manual"
FEW_SHOT = (
    "Q: What is the capital of France?\nA: Paris\n"
    "Q: How many legs does a spider have?\nA: 8\n"
    "Q: What is the boiling point of water in degrees Celsius?\nA: 100\n"
)
CONFIG: dict[str, Any] = {
    "insecure": True,
    "port": 0,
    "max_running_sequences": 4,
    "max_new_tokens": 64,
    "default_max_tokens": 16,
    "max_context_tokens": 512,
    "admission_window_ms": 5,
}


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def float32_backend() -> Iterator[TorchBackend]:
    """The cloud backend for a module fixture (``yield from float32_backend()``)."""
    # float32: the continuation tests compare token ids exactly, and bfloat16 (chosen by
    # "auto" on CPUs with native bf16) may break a near-tie differently when a prefix is
    # prefilled at once than when the same tokens were decoded one by one.
    model = {"threads": 1, "dtype": "float32"}
    b = TorchBackend.load(Settings.load(cloud={**CONFIG, "model": model}))
    yield b
    b.close()


def fleet_knowledge(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    """The fleet manual as a knowledge base, indexed in a temporary directory."""
    return KnowledgeBase(MANUAL, SentenceEncoder(), index_dir=tmp_path_factory.mktemp("idx"))
