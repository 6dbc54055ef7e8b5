"""Start ``edgecloud device serve`` (the OpenAI-compatible endpoint) as its own process on a
free loopback port, and wait until it answers ``/health``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import IO

__all__ = ["start_device_serve"]


def start_device_serve(env: dict[str, str], log: IO[str]) -> tuple[subprocess.Popen[bytes], str]:
    """``(process, base URL)`` of a device endpoint with ``os.environ`` plus ``env``, its
    output to ``log``; the caller stops the process."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from edgecloud.cli import main; main()", "device", "serve",
         "--port", str(port)], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(30)
            raise RuntimeError("the device endpoint did not start (see its log)")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
