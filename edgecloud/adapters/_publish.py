"""Publishing an exported adapter directory as the next signed version."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.adapters._manifest import DEVICE_FILE, CanaryItem, Manifest
from edgecloud.common.files import sha256_file
from edgecloud.errors import AdapterFormatError, ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgecloud.adapters._registry import AdapterRegistry

__all__ = ["publish_directory"]


def publish_directory(
    registry: AdapterRegistry,
    directory: Path,
    *,
    key: Ed25519PrivateKey,
    adapter_id: str,
    base_model: Path,
    architecture: str | None = None,
    metrics: Mapping[str, float] | None = None,
    canary: Sequence[CanaryItem] = (),
) -> Manifest:
    """Sign every file of an exported adapter (``adapter.gguf`` for devices, optionally
    ``peft/`` for the cloud) into the next version of ``adapter_id``.

    Rank, alpha and target modules come from ``peft/adapter_config.json`` when present,
    else from the GGUF. Publishing does not roll the version out.

    Args:
        base_model: the base GGUF the adapter was trained on (hashed into the manifest).
        architecture: when given, the GGUF's architecture must match it.

    Raises:
        AdapterFormatError: no ``adapter.gguf``, or a GGUF that is not a LoRA for it.
        ConfigError: a file cannot be read, or the peft config is not JSON.
    """
    from edgecloud.adapters._gguf import read_lora_gguf

    files = {
        p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()
    }
    if DEVICE_FILE not in files:
        raise AdapterFormatError(f"{directory} has no {DEVICE_FILE}")
    info = read_lora_gguf(files[DEVICE_FILE])
    if architecture is not None:
        info.check_architecture(architecture)
    peft = _peft_config(directory / "peft" / "adapter_config.json")
    try:
        base_sha256 = sha256_file(base_model)
    except OSError as exc:
        raise ConfigError(f"cannot read {base_model}: {exc.strerror}") from exc
    targets = peft.get("target_modules") or []
    return registry.publish(
        files,
        key=key,
        adapter_id=adapter_id,
        base_model_sha256=base_sha256,
        base_architecture=info.architecture,
        rank=int(peft.get("r") or info.rank),
        alpha=float(peft.get("lora_alpha") or info.alpha),
        target_modules=sorted(targets) if isinstance(targets, list) else [str(targets)],
        metrics=metrics or {},
        canary=canary,
    )


def _peft_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the peft config {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}
