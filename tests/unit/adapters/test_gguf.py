"""peft adapter dir → llama.cpp LoRA GGUF, on synthetic tensors (no model needed)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from edgecloud.adapters._gguf import LoraGgufInfo, export_lora_gguf, read_lora_gguf
from edgecloud.errors import AdapterFormatError, AdapterMismatchError

HIDDEN, INTER, RANK = 8, 12, 4
# Gemma 3 shapes scaled down: q/o are hidden x hidden here (real heads differ, the
# exporter does not care), k/v hidden -> 4, MLP hidden <-> intermediate.
MODULES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, 4),
    "self_attn.v_proj": (HIDDEN, 4),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTER),
    "mlp.up_proj": (HIDDEN, INTER),
    "mlp.down_proj": (INTER, HIDDEN),
}
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 8,
        "target_modules": [m.split(".")[1] for m in MODULES],
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "modules_to_save": None,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    config.update(overrides)
    return config


def _tensors(n_layers: int = 2, seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(n_layers):
        for module, (fan_in, fan_out) in MODULES.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            out[f"{key}.lora_A.weight"] = rng.standard_normal((RANK, fan_in), dtype=np.float32)
            out[f"{key}.lora_B.weight"] = rng.standard_normal((fan_out, RANK), dtype=np.float32)
    return out


def _peft_dir(
    root: Path,
    config: dict[str, Any] | None = None,
    tensors: dict[str, np.ndarray[Any, Any]] | None = None,
) -> Path:
    d = root / "peft"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(config or _config()))
    save_file(tensors if tensors is not None else _tensors(), str(d / "adapter_model.safetensors"))
    return d


def test_export_then_read_back(tmp_path: Path) -> None:
    tensors = _tensors()
    out = export_lora_gguf(
        _peft_dir(tmp_path, tensors=tensors), tmp_path / "a.gguf", architecture="gemma3"
    )

    info = read_lora_gguf(out)
    assert info == LoraGgufInfo(architecture="gemma3", alpha=8.0, n_tensors=28, rank=RANK)

    reader = gguf.GGUFReader(out)
    by_name = {t.name: t for t in reader.tensors}
    expected = {
        f"blk.{layer}.{name}.weight.lora_{ab}"
        for layer in range(2)
        for name in GGUF_NAMES.values()
        for ab in "ab"
    }
    assert set(by_name) == expected
    # Written as-is: lora_a is r x in, lora_b out x r (numpy order; GGUF ne is reversed).
    for module, name in GGUF_NAMES.items():
        key = f"base_model.model.model.layers.1.{module}"
        a, b = by_name[f"blk.1.{name}.weight.lora_a"], by_name[f"blk.1.{name}.weight.lora_b"]
        assert a.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(a.data), tensors[f"{key}.lora_A.weight"])
        np.testing.assert_array_equal(np.asarray(b.data), tensors[f"{key}.lora_B.weight"])
    for key, value in {"general.type": "adapter", "adapter.type": "lora"}.items():
        field = reader.get_field(key)
        assert field is not None
        assert field.contents() == value
    assert list(tmp_path.glob(".a.gguf.*")) == []  # no temp file left behind


def test_bfloat16_adapter_is_widened_exactly(tmp_path: Path) -> None:
    # safetensors.numpy cannot write bf16, so the file is built by hand: bf16 is the
    # top 16 bits of a float32, and these values have zero low bits.
    values = {
        f"base_model.model.model.layers.0.mlp.{m}.lora_{ab}.weight": np.full(
            shape, 0.5 * (i + 1), dtype=np.float32
        )
        for i, (m, ab, shape) in enumerate(
            [("up_proj", "A", (RANK, HIDDEN)), ("up_proj", "B", (INTER, RANK))]
        )
    }
    header: dict[str, Any] = {}
    body = b""
    for key, arr in values.items():
        raw = (arr.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[key] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [len(body), len(body) + len(raw)]}  # fmt: skip
        body += raw
    head = json.dumps(header).encode()
    d = tmp_path / "peft"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(_config()))
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + body)

    out = export_lora_gguf(d, tmp_path / "bf16.gguf", architecture="gemma3")
    got = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    np.testing.assert_array_equal(got["blk.0.ffn_up.weight.lora_a"], np.full((RANK, HIDDEN), 0.5))
    np.testing.assert_array_equal(got["blk.0.ffn_up.weight.lora_b"], np.full((INTER, RANK), 1.0))


def test_rslora_alpha_is_rescaled_to_llama_cpp_convention(tmp_path: Path) -> None:
    d = _peft_dir(tmp_path, _config(use_rslora=True))
    info = read_lora_gguf(export_lora_gguf(d, tmp_path / "a.gguf", architecture="gemma3"))
    # llama.cpp scales by alpha'/r; rsLoRA by alpha/sqrt(r): alpha' = alpha * sqrt(r).
    assert info.alpha == pytest.approx(8.0 * math.sqrt(RANK))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "lora_only"}, "bias"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"alpha_pattern": {"q_proj": 16}}, "alpha_pattern"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"r": 0}, "positive"),
    ],
)
def test_unrepresentable_configs_are_refused(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    d = _peft_dir(tmp_path, _config(**overrides))
    with pytest.raises(AdapterFormatError, match=message):
        export_lora_gguf(d, tmp_path / "a.gguf", architecture="gemma3")
    assert not (tmp_path / "a.gguf").exists()


def test_alpha_pattern_equal_to_global_alpha_is_fine(tmp_path: Path) -> None:
    d = _peft_dir(tmp_path, _config(alpha_pattern={"q_proj": 8}))
    assert (
        read_lora_gguf(export_lora_gguf(d, tmp_path / "a.gguf", architecture="gemma3")).alpha == 8
    )


def test_unmappable_module_is_refused_and_the_old_file_survives(tmp_path: Path) -> None:
    tensors = _tensors()
    tensors["base_model.model.model.layers.0.self_attn.rotary_proj.lora_A.weight"] = np.zeros(
        (RANK, HIDDEN), dtype=np.float32
    )
    tensors["base_model.model.model.layers.0.self_attn.rotary_proj.lora_B.weight"] = np.zeros(
        (HIDDEN, RANK), dtype=np.float32
    )
    out = tmp_path / "a.gguf"
    out.write_bytes(b"previous version")
    with pytest.raises(AdapterFormatError, match="rotary_proj"):
        export_lora_gguf(_peft_dir(tmp_path, tensors=tensors), out, architecture="gemma3")
    assert out.read_bytes() == b"previous version"
    assert list(tmp_path.glob(".a.gguf.*")) == []


_UP = "base_model.model.model.layers.0.mlp.up_proj"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("a_without_b", "not both"),
        ("embedding_lora", "not a LoRA"),
        ("rank_mismatch", "not r x in"),
        ("empty", "no LoRA weights"),
    ],
)
def test_malformed_tensors_are_refused(tmp_path: Path, case: str, message: str) -> None:
    tensors = _tensors()
    if case == "a_without_b":
        del tensors[f"{_UP}.lora_B.weight"]
    elif case == "embedding_lora":
        tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = np.zeros(
            (RANK, 3), dtype=np.float32
        )
    elif case == "rank_mismatch":
        tensors[f"{_UP}.lora_A.weight"] = np.zeros((RANK + 1, HIDDEN), dtype=np.float32)
    else:
        tensors.clear()
    with pytest.raises(AdapterFormatError, match=message):
        export_lora_gguf(
            _peft_dir(tmp_path, tensors=tensors), tmp_path / "a.gguf", architecture="gemma3"
        )


def test_unknown_architecture_and_permuted_llama_qk_are_refused(tmp_path: Path) -> None:
    d = _peft_dir(tmp_path)
    with pytest.raises(AdapterFormatError, match="no architecture 'gemma99'"):
        export_lora_gguf(d, tmp_path / "a.gguf", architecture="gemma99")
    # LLaMA's converter permutes q/k: a LoRA on them cannot be copied as-is.
    with pytest.raises(AdapterFormatError, match="rewritten"):
        export_lora_gguf(d, tmp_path / "a.gguf", architecture="llama")


def test_mlp_only_adapter_maps_for_another_architecture(tmp_path: Path) -> None:
    tensors = {k: v for k, v in _tensors().items() if ".mlp." in k}
    out = export_lora_gguf(
        _peft_dir(tmp_path, tensors=tensors), tmp_path / "a.gguf", architecture="llama"
    )
    assert read_lora_gguf(out).architecture == "llama"
    assert "blk.1.ffn_down.weight.lora_b" in {t.name for t in gguf.GGUFReader(out).tensors}


def test_read_refuses_non_gguf_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(AdapterFormatError, match="not a readable GGUF"):
        read_lora_gguf(junk)
    with pytest.raises(AdapterFormatError):
        read_lora_gguf(tmp_path / "missing.gguf")


def test_read_refuses_empty_and_truncated_files(tmp_path: Path) -> None:
    good = export_lora_gguf(_peft_dir(tmp_path), tmp_path / "a.gguf", architecture="gemma3")
    data = good.read_bytes()
    for name, content in {"empty": b"", "magic": data[:4], "mid_header": data[:200]}.items():
        bad = tmp_path / f"{name}.gguf"
        bad.write_bytes(content)
        with pytest.raises(AdapterFormatError, match="not a readable GGUF"):
            read_lora_gguf(bad)
    bumped = tmp_path / "v9.gguf"
    bumped.write_bytes(data[:4] + struct.pack("<I", 9) + data[8:])
    with pytest.raises(AdapterFormatError, match="version 9"):
        read_lora_gguf(bumped)


def _write_gguf(path: Path, general_type: str, adapter_type: str | None = None) -> Path:
    writer = gguf.GGUFWriter(path, arch="gemma3")
    writer.add_type(general_type)
    if adapter_type is not None:
        writer.add_string("adapter.type", adapter_type)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_read_refuses_a_model_gguf(tmp_path: Path) -> None:
    with pytest.raises(AdapterFormatError, match=r"general\.type='model'"):
        read_lora_gguf(_write_gguf(tmp_path / "m.gguf", "model"))


def test_read_refuses_a_non_lora_adapter(tmp_path: Path) -> None:
    with pytest.raises(AdapterFormatError, match="'control_vector', not lora"):
        read_lora_gguf(_write_gguf(tmp_path / "cv.gguf", "adapter", "control_vector"))


def test_check_architecture() -> None:
    info = LoraGgufInfo(architecture="gemma3", alpha=8.0, n_tensors=2, rank=4)
    info.check_architecture("gemma3")
    with pytest.raises(AdapterMismatchError, match="'gemma3' model, the base model is 'llama'"):
        info.check_architecture("llama")
