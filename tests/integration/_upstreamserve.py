"""A real CloudServer on the ``openai`` backend, and a CloudClient to it, for the upstream
tests (llama_cpp.server in test_upstream.py, the vLLM stand-in in test_upstream_loras.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cloud._records import RecordStore
from edgecloud.cloud._server import CloudServer
from edgecloud.cloud._upstream import UpstreamBackend
from edgecloud.config import CloudConfig
from edgecloud.transport import CloudClient

__all__ = ["client_of", "serving"]


@asynccontextmanager
async def serving(url: str, tmp: Path, **upstream: Any) -> AsyncIterator[CloudClient]:
    """Serve ``url`` with ``cloud.upstream`` = ``upstream``; records in ``tmp/r.db``, the
    adapter registry in ``tmp/registry``, the cache in ``tmp/cache``."""
    config = CloudConfig.model_validate(
        {"insecure": True, "port": 0, "backend": "openai", "max_new_tokens": 64, "default_max_tokens": 16,
         "upstream": {"url": url, "timeout_s": 30, **upstream}}
    )  # fmt: skip
    registry = AdapterRegistry(str(tmp / "registry"))
    backend = UpstreamBackend.connect(config, registry=registry, cache_dir=tmp / "cache")
    async with client_of(backend, config, RecordStore(tmp / "r.db"), registry) as client:
        yield client


@asynccontextmanager
async def client_of(
    backend: UpstreamBackend, config: CloudConfig, records: RecordStore, registry: AdapterRegistry
) -> AsyncIterator[CloudClient]:
    """A CloudServer on ``backend`` (closed on exit, with it), and a client to it."""
    server = await CloudServer.start(backend, config, records=records, registry=registry)
    client = CloudClient(f"127.0.0.1:{server.port}", tls=False, max_attempts=1)
    try:
        yield client
    finally:
        await client.close()
        await server.stop(0)
        await backend.aclose()
