"""The cloud inference service: a cloud engine behind gRPC.

The service talks to its engine through :class:`CloudBackend`;
:class:`TorchBackend` (a transformers model with continuous batching) is the
engine built in.

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

from typing import TYPE_CHECKING

from edgecloud.common.lazy import lazy_attributes

if TYPE_CHECKING:
    from edgecloud.cloud._backend import BackendInfo, CloudBackend, CloudRequest, LoadSnapshot
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.cloud._records import RecordStore, StoredRecord
    from edgecloud.cloud._server import CloudServer, serve
    from edgecloud.cloud._torch import TorchBackend

__all__ = [
    "BackendInfo",
    "CloudBackend",
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
    "BackendInfo": "edgecloud.cloud._backend",
    "CloudBackend": "edgecloud.cloud._backend",
    "CloudRequest": "edgecloud.cloud._backend",
    "LoadSnapshot": "edgecloud.cloud._backend",
    "TorchBackend": "edgecloud.cloud._torch",
    "CloudServer": "edgecloud.cloud._server",
    "serve": "edgecloud.cloud._server",
    "KnowledgeBase": "edgecloud.cloud._knowledge",
    "RecordStore": "edgecloud.cloud._records",
    "StoredRecord": "edgecloud.cloud._records",
}


__getattr__ = lazy_attributes(__name__, _HOME)
