"""Adapter versions as the cloud's engines serve them.

An engine that loads the registry's LoRAs itself (Ray Serve replicas, the torch backend
at start, an OpenAI-compatible upstream with runtime LoRA loading) needs the same three
steps: the stable version of an adapter id, a name for that version that changes when a
new one is promoted (``"<id>@<version>"``), and the version's ``peft/`` files copied out of
the registry (verified against the signed manifest) into a local directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgecloud.errors import UnknownAdapterError

if TYPE_CHECKING:
    from edgecloud.adapters._registry import AdapterRegistry

__all__ = [
    "adapter_model_id",
    "adapters_dir",
    "parse_model_id",
    "peft_dir",
    "stable_adapters",
    "stable_version",
]


def adapter_model_id(adapter_id: str, version: int) -> str:
    """The name of one adapter version (``"<id>@<version>"``)."""
    return f"{adapter_id}@{version}"


def parse_model_id(model_id: str) -> tuple[str, int]:
    """``"<id>@<version>"`` -> (id, version).

    Raises:
        UnknownAdapterError: not of that form.
    """
    adapter_id, sep, version = model_id.rpartition("@")
    if not sep or not adapter_id or not version.isdigit():
        raise UnknownAdapterError(f"unknown adapter {model_id!r}")
    return adapter_id, int(version)


def stable_version(registry: AdapterRegistry, adapter_id: str) -> int:
    """The version of ``adapter_id`` the registry serves to everyone (its rollout's stable).

    Raises:
        UnknownAdapterError: the registry has no stable version of it.
    """
    stable = registry.rollout_state(adapter_id).stable
    if stable is None:
        raise UnknownAdapterError(f"adapter {adapter_id!r} has no stable version")
    return stable


def stable_adapters(registry: AdapterRegistry) -> list[str]:
    """The adapter ids the registry has a stable version of (what such an engine serves)."""
    return [a for a in registry.adapters() if registry.rollout_state(a).stable is not None]


def adapters_dir(cache_dir: Path) -> Path:
    """Where the cloud keeps its local copies of adapter versions by default."""
    return cache_dir / "cloud" / "adapters"


def peft_dir(registry: AdapterRegistry, adapter_id: str, version: int, root: Path) -> Path:
    """The ``peft/`` files of a version, copied (once, verified) to ``root/<id>/<version>``.

    Raises:
        UnknownAdapterError: no such version, or it has no peft files.
        AdapterIntegrityError: a stored file does not match its manifest.
    """
    return registry.materialize(adapter_id, version, "peft/", root / adapter_id / str(version))
