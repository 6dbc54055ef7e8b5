"""peft LoRA adapter → llama.cpp LoRA GGUF, and reading such a file back.

The cloud trains adapters with peft on the dequantized base model; devices run
the base GGUF with llama.cpp, which takes LoRA adapters as GGUF files of their
own (``general.type=adapter``, ``adapter.type=lora``). The two formats hold the
same matrices: peft's ``lora_A`` (``r x in``) and ``lora_B`` (``out x r``) are
written as-is, in float32, as ``<gguf tensor>.lora_a`` / ``.lora_b``; llama.cpp
computes ``W x + scale * alpha / r * B (A x)`` exactly like peft's
``lora_alpha / r`` scaling. Module names are mapped with gguf's own
``TensorNameMap``, so every architecture the installed gguf package knows works
without a table here.

Needs the ``gguf`` package (``[adapters]`` extra); it is imported on first use.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.common.files import fsync_dir
from edgecloud.errors import AdapterError, AdapterFormatError, AdapterMismatchError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["LoraGgufInfo", "export_lora_gguf", "read_lora_gguf"]

_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"
# peft saves `base_model.model.<module>.lora_A.weight` (the adapter name is stripped).
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_BLOCK = re.compile(r"\.(?:layers|h|blocks|block|layer)\.(\d+)\.")
_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}
# Weights that llama.cpp's HF converter rewrites (not just renames) for these
# architectures: LLaMA-family q/k are permuted for its rotary layout, so a LoRA on
# them would need the same permutation of B. Refused rather than silently wrong.
_REWRITTEN = {("llama", "attn_q"), ("llama", "attn_k")}


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise AdapterError(
            "GGUF adapters need the gguf package: pip install 'edgecloud[adapters]'"
        ) from exc
    return gguf


@dataclass(frozen=True, slots=True)
class LoraGgufInfo:
    """What a llama.cpp LoRA GGUF declares.

    Attributes:
        architecture: ``general.architecture`` of the base model it was made for.
        alpha: ``adapter.lora.alpha`` (llama.cpp scales by ``alpha / rank``).
        n_tensors: number of tensors (two per adapted weight).
        rank: the largest LoRA rank among its weights.
    """

    architecture: str
    alpha: float
    n_tensors: int
    rank: int

    def check_architecture(self, expected: str) -> None:
        """Raise AdapterMismatchError unless the adapter was made for ``expected``.

        Raises:
            AdapterMismatchError: the architectures differ.
        """
        if self.architecture != expected:
            raise AdapterMismatchError(
                f"the adapter is for a {self.architecture!r} model, the base model is {expected!r}"
            )


def export_lora_gguf(
    peft_dir: Path, out: Path, *, architecture: str, n_layers: int | None = None
) -> Path:
    """Write a peft LoRA adapter directory as a llama.cpp LoRA GGUF.

    Args:
        peft_dir: a directory with ``adapter_config.json`` and
            ``adapter_model.safetensors`` (what ``PeftModel.save_pretrained`` writes).
        out: the GGUF file to write; replaced atomically (a reader sees the old
            file or the complete new one, never a partial one).
        architecture: the base model's ``general.architecture`` (``"gemma3"``).
        n_layers: the base model's block count; inferred from the tensor names
            when None.

    Returns:
        ``out``.

    Raises:
        AdapterFormatError: the directory is not a peft LoRA adapter, uses a
            feature llama.cpp LoRA GGUFs cannot represent (DoRA, per-module
            alpha, modules_to_save, trained biases, embedding LoRA,
            fan_in_fan_out), or names a module gguf cannot map for
            ``architecture``.
    """
    gguf = _gguf()
    arch = _model_arch(gguf, architecture)
    config = _read_config(peft_dir)
    rank = int(config.get("r") or 0)
    alpha = float(config.get("lora_alpha") or 0)
    if rank <= 0 or alpha <= 0:
        raise AdapterFormatError(f"{peft_dir / _CONFIG}: r and lora_alpha must be positive")
    if config.get("use_rslora"):
        # rsLoRA scales by alpha / sqrt(r); llama.cpp by alpha / r. The same scale
        # follows from alpha' = alpha * sqrt(r) (per tensor rank is r here: a
        # rank_pattern is refused together with rsLoRA below).
        if config.get("rank_pattern"):
            raise AdapterFormatError("rsLoRA with a rank_pattern cannot be represented")
        alpha *= math.sqrt(rank)
    tensors = _read_tensors(peft_dir)

    pairs: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise AdapterFormatError(
                f"{peft_dir / _WEIGHTS}: tensor {key!r} is not a LoRA A/B weight "
                "(embedding LoRA, modules_to_save and biases are not supported)"
            )
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    if not pairs:
        raise AdapterFormatError(f"{peft_dir / _WEIGHTS} holds no LoRA weights")

    if n_layers is None:
        blocks = [int(b) for mod in pairs for b in _BLOCK.findall(f".{mod}.")]
        n_layers = max(blocks) + 1 if blocks else 0
    name_map = gguf.get_tensor_name_map(arch, n_layers)

    mapped: list[tuple[str, npt.NDArray[Any]]] = []
    for module in sorted(pairs, key=_natural):
        ab = pairs[module]
        if set(ab) != {"A", "B"}:
            raise AdapterFormatError(f"module {module!r} has lora_{''.join(ab)} but not both")
        name = name_map.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise AdapterFormatError(
                f"module {module!r} has no llama.cpp tensor for architecture {architecture!r}"
            )
        if (architecture, name.split(".")[-2]) in _REWRITTEN:
            raise AdapterFormatError(
                f"module {module!r} ({name}) is rewritten by llama.cpp's converter for "
                f"{architecture!r}; a LoRA on it cannot be exported as-is"
            )
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterFormatError(
                f"module {module!r}: lora_A {a.shape} and lora_B {b.shape} are not r x in "
                "and out x r"
            )
        mapped.append((name + ".lora_a", a))
        mapped.append((name + ".lora_b", b))

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch=architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name, data in mapped:
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return out


def read_lora_gguf(path: Path) -> LoraGgufInfo:
    """Read and check the header of a llama.cpp LoRA GGUF.

    Only the header (metadata and tensor descriptions) is parsed, here rather than
    with ``gguf.GGUFReader``: that reader decodes every array up front and takes
    0.4 s on a rank-16 adapter and 17 s on the base model's GGUF (its 262k-entry
    vocabulary), which matters on the hot-swap path and when refusing a model file.

    Raises:
        AdapterFormatError: the file is missing, not a GGUF, or not a LoRA adapter
            (``general.type`` is not ``adapter`` or ``adapter.type`` is not ``lora``).
    """
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            kv, tensors = _parse_header(buf)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise AdapterFormatError(f"{path} is not a readable GGUF file: {exc}") from exc
    general_type = kv.get("general.type")
    if general_type != "adapter":
        raise AdapterFormatError(
            f"{path} is a GGUF with general.type={general_type!r}, not a LoRA adapter"
        )
    adapter_type = kv.get("adapter.type")
    if adapter_type != "lora":
        raise AdapterFormatError(f"{path} is an adapter of type {adapter_type!r}, not lora")
    architecture = kv.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise AdapterFormatError(f"{path} has no general.architecture")
    alpha = kv.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, int | float):
        raise AdapterFormatError(f"{path}: adapter.lora.alpha is not a number")
    # lora_b is out x r, stored with GGUF's reversed dimensions: ne[0] is the rank.
    ranks = [dims[0] for name, dims in tensors if name.endswith(".lora_b") and dims]
    return LoraGgufInfo(
        architecture=architecture,
        alpha=float(alpha),
        n_tensors=len(tensors),
        rank=max(ranks, default=0),
    )


# GGUF metadata value types (gguf.h): fixed-size ones as struct formats.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


def _parse_header(buf: Any) -> tuple[dict[str, Any], list[tuple[str, list[int]]]]:
    """Metadata (array values skipped, as None) and (name, dims) of each tensor."""
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("no GGUF magic")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version} (or a big-endian file)")
    size = len(buf)
    if n_kv > size or n_tensors > size:
        raise ValueError("corrupt header counts")
    pos = 24

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, at)
        if at + 8 + n > size:
            raise ValueError("string runs past the end of the file")
        return bytes(buf[at + 8 : at + 8 + n]).decode("utf-8"), at + 8 + n

    def value(kind: int, at: int) -> tuple[Any, int]:
        if kind == _STRING:
            return string(at)
        if kind == _ARRAY:
            item, count = struct.unpack_from("<IQ", buf, at)
            at += 12
            if item in _SCALARS:
                return None, at + count * struct.calcsize("<" + _SCALARS[item])
            for _ in range(count):
                _, at = value(item, at)
            return None, at
        fmt = _SCALARS.get(kind)
        if fmt is None:
            raise ValueError(f"unknown metadata type {kind}")
        return struct.unpack_from("<" + fmt, buf, at)[0], at + struct.calcsize("<" + fmt)

    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        kv[key], pos = value(kind, pos + 4)
    tensors: list[tuple[str, list[int]]] = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        if n_dims > 8:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        dims = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
        pos += 4 + 8 * n_dims + 4 + 8  # dims, then ggml type and data offset
        tensors.append((name, dims))
    return kv, tensors


def _model_arch(gguf: Any, architecture: str) -> Any:
    for arch, name in gguf.MODEL_ARCH_NAMES.items():
        if name == architecture:
            return arch
    raise AdapterFormatError(f"the gguf package knows no architecture {architecture!r}")


def _read_config(peft_dir: Path) -> dict[str, Any]:
    path = peft_dir / _CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"cannot read the peft config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path} is not a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterFormatError(f"{path}: peft_type is {peft_type!r}, only LORA is supported")
    refused = {
        "use_dora": "DoRA",
        "modules_to_save": "modules_to_save",
        "fan_in_fan_out": "fan_in_fan_out (Conv1D) weights",
    }
    for key, what in refused.items():
        if config.get(key):
            raise AdapterFormatError(f"{path}: {what} cannot be represented in a LoRA GGUF")
    if config.get("bias", "none") != "none":
        raise AdapterFormatError(
            f"{path}: bias={config['bias']!r}; trained biases cannot be represented"
        )
    alpha = config.get("lora_alpha")
    if any(v != alpha for v in (config.get("alpha_pattern") or {}).values()):
        # One adapter.lora.alpha per file; per-tensor ranks are fine (llama.cpp divides
        # by each tensor's own rank) but per-module alphas are not.
        raise AdapterFormatError(f"{path}: a per-module alpha_pattern cannot be represented")
    return config


def _read_tensors(peft_dir: Path) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a safetensors file as float32 numpy arrays.

    Parsed here (8-byte header length, JSON header, raw little-endian data) rather
    than with ``safetensors.numpy``, which cannot read bfloat16, the dtype peft
    saves adapters in when the model was trained in bf16; and without torch,
    which a device never has.
    """
    import numpy as np

    path = peft_dir / _WEIGHTS
    try:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
    except (OSError, ValueError, struct.error) as exc:
        raise AdapterFormatError(f"cannot read {path}: {exc}") from exc
    if not isinstance(header, dict):
        raise AdapterFormatError(f"{path}: the safetensors header is not a JSON object")
    body = memoryview(raw)[8 + n :]
    out: dict[str, npt.NDArray[Any]] = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = meta["dtype"], meta["shape"], meta["data_offsets"]
            chunk = body[start:end]
            if dtype == "BF16":
                # bfloat16 is the top half of a float32: widen by a 16-bit shift.
                bits = np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16
                arr = bits.view(np.float32)
            else:
                arr = np.frombuffer(chunk, dtype=_DTYPES[dtype]).astype(np.float32)
            out[key] = arr.reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterFormatError(f"{path}: bad tensor {key!r}: {exc}") from exc
    return out


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
