"""Adapters loaded into and dropped from a running torch engine (what a Ray Serve replica
does with multiplexed adapter versions), on the real default model in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.cloud import TorchBackend
from edgecloud.cloud._backend import CloudRequest
from edgecloud.types import Chunk, SamplingParams
from tests.fakes_adapters import make_lora_dir
from tests.integration._cloudlocal import float32_backend, run

pytestmark = [
    pytest.mark.model,
    # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps
    # a model; a third-party interplay we cannot change from here.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


@pytest.fixture(scope="module")
def backend() -> Iterator[TorchBackend]:
    yield from float32_backend()


async def greedy(backend: TorchBackend, adapter: str | None) -> list[int]:
    request = CloudRequest("Water boils at", SamplingParams(max_tokens=8), adapter_id=adapter)
    return [ev.token_id async for ev in backend.generate(request) if isinstance(ev, Chunk)]


def test_adapters_come_and_go_while_the_engine_runs(backend: TorchBackend, tmp_path: Path) -> None:
    a = make_lora_dir(tmp_path / "a", n_layers=18, b_std=0.2, seed=1) / "peft"
    b = make_lora_dir(tmp_path / "b", n_layers=18, b_std=0.2, seed=2) / "peft"

    async def scenario() -> None:
        base = await greedy(backend, None)
        await backend.add_adapter("a@1", a)  # wraps the model in peft
        with_a = await greedy(backend, "a@1")
        assert with_a != base and await greedy(backend, None) == base
        await backend.add_adapter("b@1", b)
        with_b = await greedy(backend, "b@1")
        assert backend.info.adapters == ("a@1", "b@1")
        # Dropping the active adapter leaves the others (and the base) working.
        await backend.remove_adapter("a@1")
        assert list(backend.engine.model.peft_config) == ["b@1"]
        assert await greedy(backend, "b@1") == with_b and await greedy(backend, None) == base
        # peft keeps its last adapter; it goes when the next one loads.
        await backend.remove_adapter("b@1")
        assert backend.info.adapters == () and await greedy(backend, None) == base
        await backend.add_adapter("a@2", a)
        assert list(backend.engine.model.peft_config) == ["a@2"]
        assert await greedy(backend, "a@2") == with_a and await greedy(backend, None) == base

    run(scenario)
