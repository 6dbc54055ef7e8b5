"""A random LoRA for the device's base model, in peft and llama.cpp GGUF form (fixtures).

The random-adapter helper lives in bench/ (a program directory, not a package) so
the benchmark and the tests share it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecloud.adapters._gguf import export_lora_gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
_lora: Any = importlib.import_module("_lora")


@pytest.fixture(scope="module")
def torch_model() -> Iterator[Any]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see dev()
    try:
        yield _lora.load_base_model()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def peft_dir(torch_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out: Path = _lora.make_random_lora(
        torch_model, tmp_path_factory.mktemp("peft"), rank=16, seed=1
    )
    return out


@pytest.fixture(scope="module")
def lora_gguf(peft_dir: Path, torch_model: Any) -> Path:
    out = peft_dir.parent / "adapter.gguf"
    return export_lora_gguf(peft_dir, out, architecture=_lora.architecture(torch_model))
