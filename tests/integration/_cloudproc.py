"""Helpers for cloud tests: start `edgecloud cloud serve` as a real process, a TCP proxy in
front of it that records the bytes the device sends and can add delay, and a client and
stream collector for in-process servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

EDGECLOUD = [sys.executable, "-c", "from edgecloud.cli import main; main()"]


def start_cloud(
    cache: Path, *extra: str, env: dict[str, str] | None = None, argv: list[str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Start a cloud service on a free loopback port; returns (process, port).

    ``argv`` replaces ``edgecloud cloud serve --insecure --port 0`` (another program that
    logs the same ``listening on 127.0.0.1:<port>`` line, e.g. a cloud on a fake engine)."""
    full_env = {**os.environ, "EDGECLOUD_CLOUD__MODEL__THREADS": "1", "HF_HUB_OFFLINE": "1",
                "EDGECLOUD_CACHE_DIR": str(cache), **(env or {})}  # fmt: skip
    command = argv or [*EDGECLOUD, "cloud", "serve", "--insecure", "--port", "0"]
    proc = subprocess.Popen([*command, *extra], stderr=subprocess.PIPE, text=True,
                            env=full_env)  # fmt: skip
    deadline = time.monotonic() + 300
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            # keep draining stderr so the server never blocks on a full pipe
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
            return proc, int(found.group(1))
    stop(proc)
    raise RuntimeError("the cloud service did not start")


def _drain(pipe: Any) -> None:
    with contextlib.suppress(ValueError, OSError):
        while pipe.read(65536):
            pass


class Proxy:
    """Forwards 127.0.0.1:<port> to the cloud; keeps every byte sent upstream."""

    def __init__(self, upstream_port: int, delay_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.sent = bytearray()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        ).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])

    read_size = 65536

    async def _fault(
        self, data: bytes, writer: asyncio.StreamWriter, upstream: bool
    ) -> bytes | None:
        """What to forward of ``data`` (None: nothing); a subclass injects faults here."""
        return data

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool
    ) -> None:
        try:
            while got := await reader.read(self.read_size):
                data = await self._fault(got, writer, record)
                if data is None:
                    continue
                if record:
                    self.sent.extend(data)
                elif self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)
        )

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a process started by :func:`start_cloud` and close its pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    if proc.stderr is not None:
        proc.stderr.close()


def client(server: Any, **kwargs: Any) -> Any:
    """A CloudClient on an in-process CloudServer, without retries (tests want the first error)."""
    from edgecloud.transport import CloudClient

    kwargs.setdefault("max_attempts", 1)
    return CloudClient(f"127.0.0.1:{server.port}", tls=False, **kwargs)


async def collect(c: Any, prompt: Any, **kwargs: Any) -> tuple[list[Any], Any]:
    """All chunks of one stream, and its Finish."""
    from edgecloud.types import Finish

    chunks: list[Any] = []
    finish = None
    async for event in c.stream(prompt, **kwargs):
        if isinstance(event, Finish):
            finish = event
        else:
            chunks.append(event)
    assert finish is not None
    return chunks, finish
