"""A cloud service for benchmarks: the real server in this process, on loopback."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


@contextlib.asynccontextmanager
async def local_cloud(
    *, knowledge: Path | None, threads: int = 1, top_k: int | None = None, min_score: float = 0.3,
    prompt_format: str | None = None, dtype: str | None = None,
) -> AsyncIterator[tuple[Any, Any, Any]]:  # fmt: skip
    """Yields (CloudServer, TorchBackend, CloudConfig) serving the embedded model, with
    ``knowledge`` as its knowledge base when given; stops both on exit."""
    from edgecloud.cloud import CloudServer, TorchBackend
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.cloud._records import RecordStore
    from edgecloud.common.encoder import SentenceEncoder
    from edgecloud.config import CloudConfig, Settings

    tmp = Path(tempfile.mkdtemp(prefix="edgecloud-bench."))
    model: dict[str, Any] = {"threads": threads}
    if prompt_format is not None:
        model["prompt_format"] = prompt_format
    if dtype is not None:
        model["dtype"] = dtype
    fields: dict[str, Any] = {"insecure": True, "port": 0, "model": model}
    if knowledge is not None:
        fields["knowledge"] = {"directory": str(knowledge), "index_dir": str(tmp / "idx"),
                               "min_score": min_score}  # fmt: skip
        if top_k is not None:
            fields["knowledge"]["top_k"] = top_k
    config = CloudConfig.model_validate(fields)
    settings = Settings.load().model_copy(update={"cloud": config})
    kb = (
        KnowledgeBase(knowledge, SentenceEncoder(), index_dir=tmp / "idx",
                      max_chars=config.knowledge.chunk_chars)
        if knowledge else None
    )  # fmt: skip
    backend = TorchBackend.load(settings)
    server = await CloudServer.start(
        backend, config, knowledge=kb, records=RecordStore(tmp / "records.sqlite3")
    )
    try:
        yield server, backend, config
    finally:
        await server.stop(0)
        backend.close()
