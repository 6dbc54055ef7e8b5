"""The batch engine on the real default model: a packed prefill computes what a padded one does.

float32 here, so the two layouts must agree to rounding (bfloat16, the CPU
default where the hardware has it, differs between any two batch shapes).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgecloud.cloud import TorchBackend
from edgecloud.cloud._engine import TorchEngine
from edgecloud.cloud._sequence import Sequence_, TokenStep
from edgecloud.config import Settings
from edgecloud.types import SamplingParams

pytestmark = pytest.mark.model

PROMPTS = ["Why is the sky blue?", "The capital of France is", "def fibonacci(n):",
           "Q: What is the boiling point of water at sea level?\nA:", "Hi"]  # fmt: skip


@pytest.fixture(scope="module")
def backend() -> Iterator[TorchBackend]:
    b = TorchBackend.load(
        Settings.load(cloud={"insecure": True, "model": {"threads": 1, "dtype": "float32"}})
    )
    yield b
    b.close()


def seqs(backend: TorchBackend, adapters: list[str | None] | None = None) -> list[Sequence_]:
    return [
        Sequence_(
            request_id=str(i),
            prompt_ids=backend.tokenizer(p)["input_ids"],
            params=SamplingParams(max_tokens=8),
            adapter_id=(adapters or [None])[i % len(adapters or [None])],
            emit=lambda event: None,
            decode=lambda ids: "",
            eos_ids=frozenset(),
            max_new_tokens=8,
        )
        for i, p in enumerate(PROMPTS)
    ]


def steps(engine: TorchEngine, first: list[TokenStep], n: int) -> list[list[TokenStep]]:
    out = [first]
    for _ in range(n):
        out.append(engine.decode())
    engine.reset()
    return out


@pytest.fixture
def engine(backend: TorchBackend) -> Iterator[TorchEngine]:
    backend._scheduler.close(5)  # the test drives the engine itself
    yield backend.engine
    backend.engine.reset()


def test_packed_prefill_equals_padded_prefill(backend: TorchBackend, engine: TorchEngine) -> None:
    batch = seqs(backend)
    assert engine._can_pack(batch)
    packed = steps(engine, engine._prefill_packed(seqs(backend)), 4)
    padded = steps(engine, engine._prefill_padded(seqs(backend)), 4)
    for a_row, b_row in zip(packed, padded, strict=True):
        assert [s.token_id for s in a_row] == [s.token_id for s in b_row]
        for a, b in zip(a_row, b_row, strict=True):
            assert abs(a.logprob - b.logprob) < 1e-3 and abs(a.entropy - b.entropy) < 1e-3


def test_each_packed_prompt_equals_its_solo_run(backend: TorchBackend, engine: TorchEngine) -> None:
    packed = steps(engine, engine.prefill(seqs(backend)), 3)
    for i, seq in enumerate(seqs(backend)):
        solo = steps(engine, engine.prefill([seq]), 3)
        assert [row[i].token_id for row in packed] == [row[0].token_id for row in solo]


def test_rows_the_packed_layout_cannot_hold_fall_back_to_padding(
    backend: TorchBackend, engine: TorchEngine
) -> None:
    assert not engine._can_pack(seqs(backend)[:1])  # nothing to pack
    window = backend.engine.model.config.sliding_window
    long = seqs(backend)[:2]
    long[0].prompt_ids = long[0].prompt_ids * (window // len(long[0].prompt_ids) + 1)
    assert not engine._can_pack(long)  # a sliding-window layer would see past its window
