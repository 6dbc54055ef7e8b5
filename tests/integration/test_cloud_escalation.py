"""Issue 5, cloud side, end to end on a real grpc.aio server (127.0.0.1, port 0) and the real
default model: mid-answer continuation, knowledge-grounded answers, escalation record upload.

The model loads once for the module (CPU float32, one torch thread); the knowledge base is
the fleet manual of ``bench/data`` embedded with the real MiniLM encoder.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgecloud.cloud import CloudServer, TorchBackend
from edgecloud.cloud._knowledge import KnowledgeBase
from edgecloud.cloud._records import RecordStore, StoredRecord
from edgecloud.common.records import EscalationRecord
from edgecloud.config import CloudConfig
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.errors import AuthError, InvalidRequestError
from edgecloud.transport import hash_token
from edgecloud.types import Chunk, Finish
from tests.integration._cloudlocal import (
    CONFIG,
    FEW_SHOT,
    MANUAL,
    fleet_knowledge,
    float32_backend,
    run,
)
from tests.integration._cloudproc import client, collect

pytestmark = [pytest.mark.model]


@pytest.fixture(scope="module")
def backend() -> Iterator[TorchBackend]:
    yield from float32_backend()


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    return fleet_knowledge(tmp_path_factory)


@asynccontextmanager
async def serving(
    backend: TorchBackend,
    db: Path,
    kb: KnowledgeBase | None = None,
    **overrides: Any,
) -> AsyncIterator[CloudServer]:
    config = CloudConfig.model_validate({**CONFIG, **overrides})
    server = await CloudServer.start(backend, config, knowledge=kb, records=RecordStore(db))
    try:
        yield server
    finally:
        await server.stop(0)


def stored(db: Path) -> list[StoredRecord]:
    store = RecordStore(db)
    try:
        return store.records()
    finally:
        store.close()


def records(n: int, start: int = 0, **kwargs: Any) -> list[EscalationRecord]:
    def fields(i: int) -> dict[str, Any]:
        return {
            "prompt": f"Q: question {i}?\nA:", "local_partial": f"partial {i}",
            "cloud_answer": f"answer {i}", "route_policy": "confidence",
            "route_reason": "low logprob", "signals": {"mean_logprob": -1.5 - i / 1000},
            "latency_ms": 100.0 + i, "extra": {"n": i}, "id": f"rec-{i:05d}",
            "created_at": 1_700_000_000.0 + i,
        }  # fmt: skip

    return [EscalationRecord(**{**fields(i), **kwargs}) for i in range(start, start + n)]


@pytest.mark.parametrize("chat", [False, True])
def test_continuation_after_a_prefix_is_the_tail_of_the_full_answer(
    backend: TorchBackend, tmp_path: Path, chat: bool
) -> None:
    prompt: Any = "Why is the sky blue?"
    if chat:
        prompt = [{"role": "user", "content": "Name three kinds of robots."}]
    total = 14

    async def scenario() -> tuple[list[Chunk], list[Chunk], Finish, str]:
        async with serving(backend, tmp_path / "r.db") as server, client(server) as c:
            full, _ = await collect(c, prompt, max_tokens=total)
            ids = [ch.token_id for ch in full]
            # A prefix ending on a token boundary of that answer, as a device hands off.
            k = next(
                k for k in range(4, total - 3)
                if backend.tokenizer(backend._decode(ids[:k]), add_special_tokens=False)[
                    "input_ids"] == ids[:k]
            )  # fmt: skip
            prefix = backend._decode(ids[:k])
            tail, finish = await collect(c, prompt, max_tokens=total - k, assistant_prefix=prefix)
            return full, tail, finish, prefix

    full, tail, finish, prefix = run(scenario)
    k = len(full) - len(tail)
    assert k >= 4 and prefix
    full_text = "".join(ch.text for ch in full)
    assert full_text.startswith(prefix)
    assert [ch.token_id for ch in tail] == [ch.token_id for ch in full[k:]]
    assert "".join(ch.text for ch in tail) == full_text[len(prefix) :]
    # The stream and the usage count only what follows the prefix.
    assert [ch.index for ch in tail] == list(range(len(tail)))
    assert finish.completion_tokens == len(tail) == total - k


def test_knowledge_grounds_the_answer_and_passages_come_back(
    backend: TorchBackend, knowledge: KnowledgeBase, tmp_path: Path
) -> None:
    prompt = f"{FEW_SHOT}Q: What is the maximum payload of the Kestrel robot?\nA:"

    async def scenario() -> tuple[tuple[list[Chunk], Finish], tuple[list[Chunk], Finish]]:
        async with (
            serving(backend, tmp_path / "r.db", knowledge) as server,
            client(server) as c,
        ):
            grounded = await collect(c, prompt, max_tokens=12, stop=["\n"])
            plain = await collect(c, prompt, max_tokens=12, stop=["\n"], skip_knowledge=True)
            return grounded, plain

    (chunks, finish), (plain_chunks, plain_finish) = run(scenario)
    answer = "".join(ch.text for ch in chunks)
    plain = "".join(ch.text for ch in plain_chunks)
    assert "22.0" in answer, answer
    assert "22" not in plain, plain
    assert finish.passages and finish.passages[0].source == "kestrel.md"
    assert any("22.0" in p.text for p in finish.passages)
    assert all(p.score >= 0.3 for p in finish.passages)
    # skip_knowledge: nothing retrieved, nothing put into the prompt.
    assert plain_finish.passages == ()
    assert finish.prompt_tokens > plain_finish.prompt_tokens


def test_knowledge_from_config_and_min_score(backend: TorchBackend, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "heron.md").write_text((MANUAL / "heron.md").read_text())
    knowledge = {"directory": str(docs), "index_dir": str(tmp_path / "idx"), "top_k": 1}
    question = f"{FEW_SHOT}Q: How much weight can the Heron carry?\nA:"

    async def scenario(**overrides: Any) -> Finish:
        async with (
            serving(backend, tmp_path / "r.db", **overrides) as server,
            client(server) as c,
        ):
            _, finish = await collect(c, question, max_tokens=1)
            return finish

    finish = run(lambda: scenario(knowledge=knowledge))
    assert len(finish.passages) == 1 and finish.passages[0].source == "heron.md"
    assert (tmp_path / "idx" / "manifest.json").is_file()
    strict = run(lambda: scenario(knowledge={**knowledge, "min_score": 9.0}))
    assert strict.passages == () and strict.prompt_tokens < finish.prompt_tokens
    off = run(lambda: scenario(knowledge={**knowledge, "enabled": False}))
    assert off.passages == ()


def test_upload_is_idempotent_and_survives_a_restart(backend: TorchBackend, tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    batch = records(5)

    async def first() -> tuple[list[str], list[str], int]:
        async with serving(backend, db) as server, client(server) as c:
            a = await c.upload(batch)
            b = await c.upload(batch)  # the ack was lost: the device sends it again
            return a, b, len(server.records)

    async def second() -> tuple[list[str], int]:
        async with serving(backend, db) as server, client(server) as c:
            acked = await c.upload([*batch[3:], *records(2, start=5)])
            return acked, len(server.records)

    ids = [r.id for r in batch]
    acked_a, acked_b, count = run(first)
    assert acked_a == acked_b == ids and count == 5
    acked, count = run(second)
    assert acked == ["rec-00003", "rec-00004", "rec-00005", "rec-00006"] and count == 7
    kept = stored(db)
    assert [s.record for s in kept] == [*batch, *records(2, start=5)]
    assert all(s.device is None for s in kept)


def test_oversized_record_is_rejected_and_nothing_of_the_call_stored(
    backend: TorchBackend, tmp_path: Path
) -> None:
    db = tmp_path / "records.db"
    big = records(1, start=9, local_partial="x" * 3000)

    async def scenario() -> int:
        async with (
            serving(backend, db, records={"max_record_bytes": 2048}) as server,
            client(server) as c,
        ):
            with pytest.raises(
                InvalidRequestError, match=r"bytes; the service accepts at most 2048"
            ):
                await c.upload([*records(2), *big])
            assert await c.upload(records(2)) == ["rec-00000", "rec-00001"]
            # Too big for any gRPC message: refused before sending, not retried as overload.
            huge = records(1, start=20, prompt="y" * 70_000)
            async with client(server, max_message_bytes=64 * 1024) as small:
                with pytest.raises(InvalidRequestError, match="messages are limited to 65536"):
                    await small.upload(huge)
            return len(server.records)

    assert run(scenario) == 2


def test_upload_needs_a_token_and_keeps_the_device_identity(
    backend: TorchBackend, tmp_path: Path
) -> None:
    db = tmp_path / "records.db"
    auth = {"tokens": {"robot-7": hash_token("secret-7")}}

    async def scenario() -> None:
        async with serving(backend, db, auth=auth) as server:
            async with client(server) as anonymous:
                with pytest.raises(AuthError):
                    await anonymous.upload(records(1))
            async with client(server, token="wrong") as wrong:
                with pytest.raises(AuthError):
                    await wrong.upload(records(1))
            assert len(server.records) == 0
            async with client(server, token="secret-7") as c:
                assert await c.upload(records(2)) == ["rec-00000", "rec-00001"]

    run(scenario)
    assert [s.device for s in stored(db)] == ["robot-7", "robot-7"]


UPLOADER = textwrap.dedent(
    """
    import asyncio, sys, time
    from edgecloud.device._escalation_log import EscalationLog
    from edgecloud.transport import CloudClient

    async def main(target: str, path: str) -> None:
        log = EscalationLog(path)
        async with CloudClient(target, tls=False, max_attempts=1, timeout_s=10) as cloud:
            while batch := log.pending(5):
                acked = await cloud.upload(batch)
                log.acknowledge(acked)
                print("acked", len(acked), flush=True)
                time.sleep(0.02)  # a device paces its uploads; leaves time to kill it midway
        print("done", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_device_killed_while_uploading_loses_and_duplicates_nothing(
    backend: TorchBackend, tmp_path: Path
) -> None:
    cloud_db, device_db = tmp_path / "cloud.db", tmp_path / "device.db"
    script = tmp_path / "uploader.py"
    script.write_text(UPLOADER)
    expected = records(300)
    log = EscalationLog(device_db)
    for r in expected:
        log.append(r)
    log.close()

    async def uploader(port: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(script), f"127.0.0.1:{port}", str(device_db),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def killed_midway() -> int:
        async with serving(backend, cloud_db) as server:
            proc = await uploader(server.port)
            assert proc.stdout is not None
            for _ in range(8):
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
                assert line.startswith(b"acked"), line
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            return len(server.records)

    async def restarted() -> None:
        async with serving(backend, cloud_db) as server:
            proc = await uploader(server.port)
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0 and out.endswith(b"done\n"), out

    stored_at_kill = run(killed_midway)
    assert 40 <= stored_at_kill < len(expected)
    run(restarted)
    kept = stored(cloud_db)
    assert len(kept) == len(expected)
    assert sorted((s.record for s in kept), key=lambda r: r.id) == expected
    device_log = EscalationLog(device_db)
    assert len(device_log) == 0
    device_log.close()
