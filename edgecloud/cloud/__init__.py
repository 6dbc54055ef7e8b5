"""The cloud inference service: a torch backend with continuous batching behind gRPC.

Names load on first use, so ``edgecloud`` commands that never touch the cloud
(and ``import edgecloud.cloud`` itself) load neither grpc nor torch.

Examples:
    >>> import asyncio
    >>> from edgecloud.config import Settings
    >>> from edgecloud.cloud import TorchBackend, serve
    >>> settings = Settings.load("cloud.toml")                   # doctest: +SKIP
    >>> backend = TorchBackend.load(settings)                    # doctest: +SKIP
    >>> asyncio.run(serve(backend, settings.cloud))              # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.cloud._records import RecordStore, StoredRecord
    from edgecloud.cloud._scheduler import LoadSnapshot
    from edgecloud.cloud._server import CloudServer, serve
    from edgecloud.cloud._torch import BackendInfo, CloudRequest, TorchBackend

__all__ = [
    "BackendInfo",
    "CloudRequest",
    "CloudServer",
    "KnowledgeBase",
    "LoadSnapshot",
    "RecordStore",
    "StoredRecord",
    "TorchBackend",
    "serve",
]

_HOME = {
    "BackendInfo": "edgecloud.cloud._torch",
    "CloudRequest": "edgecloud.cloud._torch",
    "TorchBackend": "edgecloud.cloud._torch",
    "CloudServer": "edgecloud.cloud._server",
    "serve": "edgecloud.cloud._server",
    "LoadSnapshot": "edgecloud.cloud._scheduler",
    "KnowledgeBase": "edgecloud.cloud._knowledge",
    "RecordStore": "edgecloud.cloud._records",
    "StoredRecord": "edgecloud.cloud._records",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'edgecloud.cloud' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
