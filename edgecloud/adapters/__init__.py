"""LoRA adapters: manifests, Ed25519 signing, the registry, sync, GGUF/safetensors export.

The cloud trains an adapter (``edgecloud.cloud``), exports it twice (peft
safetensors for the cloud's torch backend, a llama.cpp LoRA GGUF for devices),
describes both files in a :class:`Manifest`, signs it and publishes the version
to a registry. Devices watch the registry over gRPC, fetch new versions
(resumable), verify signature and hashes, install atomically and hot-swap
(``edgecloud.device``).
"""

from __future__ import annotations

__all__: list[str] = []
