"""A cloud service process on the fake engine: the real gRPC service layer (servicer, auth,
admission, record store, adapter sync) over :class:`PacedEngine`, which answers in a fixed
number of tokens at a fixed pace and costs no CPU for a model.

Run as ``python -m tests.reliability._fakecloud <records.db> <registry dir> '<cloud JSON>'
[<seconds per token>]``; it logs ``listening on 127.0.0.1:<port>`` like ``edgecloud cloud
serve`` (so :func:`tests.integration._cloudproc.start_cloud` starts it) and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncGenerator

from edgecloud.cloud import CloudRequest
from edgecloud.types import Chunk, Finish, Retraction
from tests.fakes_cloud import ScriptedEngine

ANSWER = "the cloud answers every question in eight words"


class PacedEngine(ScriptedEngine):
    """A :class:`ScriptedEngine` that waits ``token_s`` before each event and keeps no
    history (a long run must not grow the fake's own lists)."""

    def __init__(self, answer: str = ANSWER, *, token_s: float = 0.0, **kw: object) -> None:
        super().__init__(answer, **kw)  # type: ignore[arg-type]
        self.token_s = token_s

    async def generate(
        self, request: CloudRequest
    ) -> AsyncGenerator[Chunk | Finish | Retraction, None]:
        async for event in super().generate(request):
            self.requests.clear()
            self.prompts.clear()
            if self.token_s:
                await asyncio.sleep(self.token_s)
            yield event


def main(argv: list[str]) -> None:
    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.cloud._records import RecordStore
    from edgecloud.cloud._server import serve
    from edgecloud.config import CloudConfig

    db, registry, config_json, *rest = argv
    token_s = float(rest[0]) if rest else 0.0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = CloudConfig.model_validate_json(config_json)
    asyncio.run(serve(PacedEngine(token_s=token_s), config, records=RecordStore(db),
                      registry=AdapterRegistry(registry)))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
