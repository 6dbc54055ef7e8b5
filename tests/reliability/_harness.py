"""What the reliability tests share: a fake-engine cloud process, a fault-injecting TCP
proxy, a device engine on a scripted backend, and process gauges (RSS, fds, threads)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from edgecloud.config import DeviceCloudConfig, RouterConfig
from edgecloud.device._endpoints import CircuitBreaker, Endpoint, EndpointPool
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._hybrid import HybridEngine
from edgecloud.transport import CloudClient
from tests.fakes import ScriptedBackend
from tests.integration._cloudproc import Proxy, start_cloud

ROOT = Path(__file__).resolve().parents[2]
FAKE_CLOUD = [sys.executable, "-m", "tests.reliability._fakecloud"]
# ScriptedBackend's token i has logprob -0.5 * (i + 1): this router hands off after 3 tokens.
TRIP = RouterConfig(window=2, min_mean_logprob=-1.2, min_tokens=2)


def start_fake_cloud(
    where: Path, config: dict[str, Any], token_s: float = 0.0
) -> tuple[subprocess.Popen[str], int]:
    """A cloud process on :class:`~tests.reliability._fakecloud.PacedEngine` whose records
    go to ``where/records.db``; returns (process, port)."""
    cfg = json.dumps({"insecure": True, "port": 0, **config})
    argv = [*FAKE_CLOUD, str(where / "records.db"), str(where / "registry"), cfg, str(token_s)]
    # the repository on the path, wherever pytest was started from (it imports tests.*)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return start_cloud(where, argv=argv, env={"PYTHONPATH": path})


@dataclass(frozen=True)
class Gauges:
    """One reading of a process: resident memory, open file descriptors, threads."""

    rss: int
    fds: int
    threads: int


def gauges(pid: int) -> Gauges:
    p = psutil.Process(pid)
    return Gauges(p.memory_info().rss, p.num_fds(), p.num_threads())


_CONNECTION: contextvars.ContextVar[dict[str, int]] = contextvars.ContextVar("connection")
Fault = Literal["pass", "drop", "delay", "reset", "half_open", "slow_read", "bandwidth"]


class FaultProxy(Proxy):
    """:class:`~tests.integration._cloudproc.Proxy` with a fault, switchable at any time
    (``proxy.fault = ...``); it acts on the connections open then and on new ones.

    ``drop``: every connection is reset at its next byte and new ones at once;
    ``delay``: each piece of the answer waits ``fault_delay_s``; ``reset``: a connection
    is reset (RST) once ``reset_after`` bytes went through it while the fault is on;
    ``half_open``: bytes are taken in and nothing comes out, and the connection stays
    open and silent even after the fault is lifted (new ones pass then); ``slow_read``:
    the answer is read ``slow_bytes`` at a time with a pause between reads;
    ``bandwidth``: bytes flow at ``rate`` per second each way.
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.fault: Fault = "pass"
        self.fault_delay_s = 0.3
        self.reset_after = 200
        self.slow_bytes = 32
        self.rate = 4096.0
        self.connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.fault == "drop":
            _reset(writer)
            return
        # Both directions' pipes run in tasks that copy this context: they share the dict.
        _CONNECTION.set({"dead": False, "sent": 0})
        with contextlib.suppress(asyncio.CancelledError):  # the proxy closing
            await super()._handle(reader, writer)

    @property
    def read_size(self) -> int:  # type: ignore[override]
        # a capped link delivers in small pieces, not a whole message after a pause
        return {"slow_read": self.slow_bytes, "bandwidth": 1024}.get(self.fault, 65536)

    async def _fault(
        self, data: bytes, writer: asyncio.StreamWriter, upstream: bool
    ) -> bytes | None:
        fault, connection = self.fault, _CONNECTION.get()
        if fault == "half_open" or connection["dead"]:
            # swallowed: the peer sees an open, silent connection, for good (the far end
            # forgot it, as after a NAT timeout); new connections pass once it is lifted
            connection["dead"] = True
            return None
        if fault == "drop":  # open connections are cut too, not only new ones refused
            _reset(writer)
            raise ConnectionResetError
        if fault == "reset":
            connection["sent"] += len(data)
            if connection["sent"] > self.reset_after:
                _reset(writer)
                raise ConnectionResetError
        elif fault == "bandwidth":  # both ways
            await asyncio.sleep(len(data) / self.rate)
        elif upstream:
            pass
        elif fault == "delay":
            await asyncio.sleep(self.fault_delay_s)
        elif fault == "slow_read":
            await asyncio.sleep(0.01)
        return data


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (linger 0), as a crashed peer or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ForgetfulBackend(ScriptedBackend):
    """A :class:`ScriptedBackend` that keeps no history of what it was asked (a soak's
    memory readings must show the engine's growth, not the fake's own lists)."""

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        for kept in (self.seen, self.prefixes, self.finishes):
            kept.clear()
        return super().stream(*args, **kwargs)


def device(
    port: int, log: Path, *, script: str = "one two three four five six seven eight",
    timeout_s: float = 3.0, first_token_timeout_s: float = 1.0, token: str | None = None,
    keepalive_s: float = 30.0,
) -> HybridEngine:  # fmt: skip
    """A device engine (scripted local model, the router trips after 3 tokens) whose one
    cloud endpoint is ``127.0.0.1:port``, logging escalations to ``log``."""
    client = CloudClient(f"127.0.0.1:{port}", tls=False, max_attempts=1, timeout_s=timeout_s,
                         token=token, keepalive_s=keepalive_s)  # fmt: skip
    cloud = DeviceCloudConfig(timeout_s=timeout_s, first_token_timeout_s=first_token_timeout_s,
                              breaker_cooldown_s=0.2)  # fmt: skip
    return HybridEngine(
        ForgetfulBackend(script), pool=EndpointPool([Endpoint(client, CircuitBreaker(3, 0.2))]),
        router=TRIP, cloud=cloud, log=EscalationLog(log),
    )  # fmt: skip
