"""LoRA adapters: manifests, Ed25519 signing, the registry, sync, GGUF/safetensors export.

The cloud trains an adapter (``edgecloud.cloud``), exports it twice (peft
safetensors for the cloud's torch backend, a llama.cpp LoRA GGUF for devices),
describes both files in a :class:`Manifest`, signs it and publishes the version
to a registry. Devices watch the registry over gRPC, fetch new versions
(resumable), verify signature and hashes, install atomically and hot-swap
(``edgecloud.device``).

The names below load on first use, so ``import edgecloud.adapters`` stays light
(cryptography, fsspec and gguf are imported only by what needs them).

Examples:
    >>> from edgecloud.adapters import AdapterRegistry, load_private_key  # doctest: +SKIP
    >>> registry = AdapterRegistry("s3://fleet-adapters/prod")            # doctest: +SKIP
    >>> registry.rollout("default", 7, percent=10)                        # doctest: +SKIP
"""

from __future__ import annotations

from edgecloud.common.lazy import lazy_attributes

__all__ = [
    "AdapterCalibration",
    "AdapterRegistry",
    "AdapterScope",
    "CanaryItem",
    "Manifest",
    "SignedManifest",
    "export_lora_gguf",
    "generate_keypair",
    "load_private_key",
    "load_public_keys",
    "read_lora_gguf",
    "sign",
    "verify",
]

_HOME = {
    "AdapterRegistry": "_registry",
    "AdapterCalibration": "_manifest",
    "AdapterScope": "_manifest",
    "CanaryItem": "_manifest",
    "Manifest": "_manifest",
    "SignedManifest": "_signing",
    "export_lora_gguf": "_gguf",
    "generate_keypair": "_signing",
    "load_private_key": "_signing",
    "load_public_keys": "_signing",
    "read_lora_gguf": "_gguf",
    "sign": "_signing",
    "verify": "_signing",
}


__getattr__ = lazy_attributes(__name__, _HOME)
