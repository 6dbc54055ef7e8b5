"""Random peft LoRA adapters for the default model, shared by bench/ and tests/.

A freshly initialised LoRA has ``B = 0`` and changes nothing, so here ``B`` is
drawn from a seeded normal: the adapter moves the model's outputs (a test
comparing adapted with base output can fail) without wrecking them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_base_model() -> Any:
    """The default model as a float32 transformers model (from the GGUF conversion cache)."""
    from transformers import AutoModelForCausalLM

    from edgecloud.cloud._torch import resolve_model_dir
    from edgecloud.config import Settings

    model_dir, _ = resolve_model_dir(Settings.load())
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    model.eval()
    return model


def make_random_lora(
    model: Any,
    out_dir: Path,
    *,
    rank: int = 16,
    alpha: int = 32,
    seed: int = 0,
    b_std: float = 0.02,
    targets: tuple[str, ...] = TARGETS,
) -> Path:
    """Save a rank-``rank`` LoRA with seeded random A and B for ``model`` to ``out_dir``.

    ``model`` is left as it was: the LoRA layers peft injects are removed again
    (``unload``), so one loaded model can make several adapters.

    Returns:
        ``out_dir`` (``adapter_config.json`` + ``adapter_model.safetensors``).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # peft draws A from the global generator
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    with warnings.catch_warnings():
        # peft calls transformers' deprecated is_gradient_checkpointing (a FutureWarning
        # that pytest's warnings-as-errors would turn into a failure); not ours to fix.
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * b_std)
    peft_model.save_pretrained(str(out_dir))
    peft_model.unload()
    return out_dir


def architecture(model: Any) -> str:
    """The llama.cpp architecture name of a transformers model (``gemma3_text`` → ``gemma3``)."""
    model_type = str(model.config.model_type)
    return {"gemma3_text": "gemma3"}.get(model_type, model_type)


def adapter_rank(peft_dir: Path) -> int:
    """The ``r`` of a saved peft adapter."""
    return int(json.loads((peft_dir / "adapter_config.json").read_text())["r"])
