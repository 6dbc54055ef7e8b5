"""LoRA adapters on the device: peft → GGUF export, hot-swap in the llama.cpp backend.

The reference is torch + peft on the dequantized base model: llama.cpp with the
exported adapter must pick the same greedy tokens.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from edgecloud.adapters._gguf import export_lora_gguf, read_lora_gguf
from edgecloud.backends import AdapterCapable, LlamaCppBackend
from edgecloud.errors import (
    AdapterFormatError,
    AdapterMismatchError,
    BackendClosedError,
    InvalidRequestError,
)
from edgecloud.types import Chunk, SamplingParams
from tests.integration._randomlora import lora_gguf, peft_dir, torch_model

__all__ = ["lora_gguf", "peft_dir", "torch_model"]  # fixtures used here

pytestmark = pytest.mark.model

PROMPTS = [
    "Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Japan?\nA:",
    "Q: What color is the sky?\nA: Blue\nQ: What color is grass?\nA:",
    "Q: How many legs does a dog have?\nA: Four\nQ: How many legs does a bird have?\nA:",
]
N = 16
GREEDY = SamplingParams(max_tokens=N, temperature=0.0)


@pytest.fixture(scope="module")
def dev(default_gguf: Path) -> Iterator[LlamaCppBackend]:
    # One thread: llama.cpp's threads spin-wait for each other at every op, so with two
    # threads on a shared 2-core runner one busy neighbour makes decoding ~10x slower;
    # one thread is slower on a quiet machine but stays inside the time budget.
    b = LlamaCppBackend(default_gguf, n_ctx=512, n_threads=1)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def base_tokens(dev: LlamaCppBackend) -> list[list[int]]:
    assert dev.adapter is None
    return [_tokens(dev, p) for p in PROMPTS]


def _tokens(dev: LlamaCppBackend, prompt: str) -> list[int]:
    return [c.token_id for c in dev.stream(prompt, GREEDY) if isinstance(c, Chunk)]


def _torch_check(model: Any, dev: LlamaCppBackend, prompt: str, got: list[int]) -> list[float]:
    """Teacher-forced: feed llama.cpp's tokens to torch and return, per position, how far
    the chosen token's logit is below torch's best (0.0 = torch's own greedy choice)."""
    import torch

    ids = dev.tokenize(prompt)  # the same ids on both sides
    with torch.no_grad():
        logits = model(torch.tensor([ids + got]), logits_to_keep=len(got) + 1).logits[0, :-1]
    chosen = logits[torch.arange(len(got)), torch.tensor(got)]
    return (logits.max(dim=-1).values - chosen).tolist()  # type: ignore[no-any-return]


def test_exported_adapter_matches_torch_peft_and_changes_the_output(
    dev: LlamaCppBackend,
    torch_model: Any,
    peft_dir: Path,
    lora_gguf: Path,
    base_tokens: list[list[int]],
) -> None:
    from peft import PeftModel

    info = read_lora_gguf(lora_gguf)
    assert (info.architecture, info.rank, info.alpha, info.n_tensors) == ("gemma3", 16, 32, 252)

    assert isinstance(dev, AdapterCapable)
    seconds = dev.set_adapter(lora_gguf)
    try:
        assert dev.adapter == lora_gguf
        assert 0 < seconds < 5
        adapted = [_tokens(dev, p) for p in PROMPTS]
    finally:
        dev.set_adapter(None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft → deprecated transformers API
        peft_model = PeftModel.from_pretrained(torch_model, peft_dir)
    try:
        gaps = [g for p, got in zip(PROMPTS, adapted, strict=True)
                for g in _torch_check(peft_model, dev, p, got)]  # fmt: skip
    finally:
        peft_model.unload()

    # Every token is torch+peft's greedy choice, or a near-tie with it: llama.cpp runs
    # the 4-bit weights with 8-bit activations, torch their float32 dequantization, so
    # logits differ by a few hundredths (one 0.03 tie in these prompts). A missing or
    # mis-scaled adapter puts tokens whole logits behind.
    assert len(gaps) >= N * len(PROMPTS) - 8
    assert max(gaps) < 0.25, gaps
    assert sum(g == 0.0 for g in gaps) >= 0.9 * len(gaps)
    # The adapter really moves the model (otherwise the comparison above proves nothing).
    assert sum(a != b for a, b in zip(adapted, base_tokens, strict=True)) >= 2


def test_detaching_returns_exactly_the_base_output(
    dev: LlamaCppBackend, lora_gguf: Path, base_tokens: list[list[int]]
) -> None:
    dev.set_adapter(lora_gguf, scale=1.0)
    first = _tokens(dev, PROMPTS[0])
    assert first != base_tokens[0]
    dev.set_adapter(None)
    assert dev.adapter is None
    assert dev.adapter_scale == 0.0
    assert [_tokens(dev, p) for p in PROMPTS[:2]] == base_tokens[:2]
    # Swapping back in reproduces the adapted output (the KV cache of the base was dropped).
    dev.set_adapter(lora_gguf)
    try:
        assert _tokens(dev, PROMPTS[0]) == first
    finally:
        dev.set_adapter(None)


def test_a_request_without_the_adapter_gets_the_base_output_and_keeps_it_loaded(
    dev: LlamaCppBackend, lora_gguf: Path, base_tokens: list[list[int]]
) -> None:
    dev.set_adapter(lora_gguf)
    try:
        adapted = _tokens(dev, PROMPTS[0])
        assert adapted != base_tokens[0]

        def tokens(use_adapter: bool) -> list[int]:
            events = dev.stream(PROMPTS[0], GREEDY, use_adapter=use_adapter)
            return [e.token_id for e in events if isinstance(e, Chunk)]

        # Alternating: each change drops the KV cache, so neither leaks into the other.
        assert tokens(False) == base_tokens[0]
        assert dev.adapter == lora_gguf  # still loaded
        assert tokens(True) == adapted
        assert tokens(False) == base_tokens[0]
        assert _tokens(dev, PROMPTS[0]) == adapted  # the default is the adapter
    finally:
        dev.set_adapter(None)


def test_scale_zero_is_the_base_model(
    dev: LlamaCppBackend, lora_gguf: Path, base_tokens: list[list[int]]
) -> None:
    with pytest.raises(InvalidRequestError, match="finite"):
        dev.set_adapter(lora_gguf, scale=float("nan"))
    assert dev.adapter is None
    dev.set_adapter(lora_gguf, scale=0.0)
    try:
        assert _tokens(dev, PROMPTS[0]) == base_tokens[0]
    finally:
        dev.set_adapter(None)


def test_non_adapter_gguf_is_refused_before_llama_cpp_sees_it(
    dev: LlamaCppBackend, default_gguf: Path, lora_gguf: Path, base_tokens: list[list[int]]
) -> None:
    dev.set_adapter(lora_gguf)
    try:
        with pytest.raises(AdapterFormatError, match=r"general\.type='model'"):
            dev.set_adapter(default_gguf)
        assert dev.adapter == lora_gguf  # the active adapter is kept
    finally:
        dev.set_adapter(None)
    assert _tokens(dev, PROMPTS[0]) == base_tokens[0]


def test_adapter_for_another_architecture_is_refused(
    dev: LlamaCppBackend, peft_dir: Path, base_tokens: list[list[int]]
) -> None:
    other = export_lora_gguf(peft_dir, peft_dir.parent / "qwen2.gguf", architecture="qwen2")
    with pytest.raises(AdapterMismatchError, match="'qwen2' model"):
        dev.set_adapter(other)
    assert dev.adapter is None
    assert _tokens(dev, PROMPTS[1]) == base_tokens[1]


def test_adapter_llama_cpp_rejects_raises_format_error(
    dev: LlamaCppBackend, tmp_path: Path, base_tokens: list[list[int]]
) -> None:
    # Valid header, gemma3, but shapes that do not fit the base weights: llama.cpp's
    # loader returns NULL, which must surface as an error, not a crash.
    d = tmp_path / "peft"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    key = "base_model.model.model.layers.0.mlp.up_proj"
    save_file({f"{key}.lora_A.weight": np.ones((2, 8), dtype=np.float32),
               f"{key}.lora_B.weight": np.ones((8, 2), dtype=np.float32)},
              str(d / "adapter_model.safetensors"))  # fmt: skip
    bad = export_lora_gguf(d, tmp_path / "bad.gguf", architecture="gemma3")
    with pytest.raises(AdapterFormatError, match="could not load the adapter"):
        dev.set_adapter(bad)
    assert dev.adapter is None
    assert _tokens(dev, PROMPTS[2]) == base_tokens[2]


def test_swap_during_a_stream_waits_for_it(
    dev: LlamaCppBackend, lora_gguf: Path, base_tokens: list[list[int]]
) -> None:
    # The reference comes from the same KV-cache state as the stream below (the prompt
    # cached by the call before): a prompt evaluated in other batch splits may break a
    # near-tie differently, which is llama.cpp's arithmetic, not the swap.
    _tokens(dev, PROMPTS[0])
    expected = _tokens(dev, PROMPTS[0])
    assert expected[:4] == base_tokens[0][:4]
    stream = dev.stream(PROMPTS[0], GREEDY)
    first = next(stream)  # the stream now holds the generation lock
    assert isinstance(first, Chunk)
    swapped = threading.Event()
    errors: list[BaseException] = []

    def swap() -> None:
        try:
            dev.set_adapter(lora_gguf)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        swapped.set()

    t = threading.Thread(target=swap)
    t.start()
    try:
        assert not swapped.wait(0.5), "the swap did not wait for the running stream"
        rest = [c.token_id for c in stream if isinstance(c, Chunk)]
        assert swapped.wait(10)
    finally:
        t.join(10)
    try:
        assert errors == []
        assert [first.token_id, *rest] == expected  # all base tokens
        assert dev.adapter == lora_gguf
        assert _tokens(dev, PROMPTS[0]) != base_tokens[0]  # the next request is adapted
    finally:
        dev.set_adapter(None)


def test_close_frees_the_adapter_then_refuses_swaps(default_gguf: Path, lora_gguf: Path) -> None:
    b = LlamaCppBackend(default_gguf, n_ctx=256, n_threads=1)
    started = time.perf_counter()
    b.set_adapter(lora_gguf)
    b.set_adapter(lora_gguf)  # a second handle replaces (and frees) the first
    assert time.perf_counter() - started < 10
    b.close()  # context, adapter, model: a wrong order crashes the process here
    b.close()
    with pytest.raises(BackendClosedError):
        b.set_adapter(None)
    with pytest.raises(BackendClosedError):
        b.set_adapter(lora_gguf)


def test_a_hot_swap_is_quiet_at_warning_level(
    dev: LlamaCppBackend, lora_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A library user who swaps adapters must not get one llama.cpp line per LoRA tensor
    at WARNING; the lines stay at DEBUG for whoever wants them."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="edgecloud.native"):
        dev.set_adapter(lora_gguf)
        dev.set_adapter(None)
    native = [r for r in caplog.records if r.name.startswith("edgecloud.native")]
    assert [r.getMessage() for r in native if r.levelno >= logging.WARNING] == []
