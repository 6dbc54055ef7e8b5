"""Start llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``) on
a free loopback port: the real upstream of the ``openai`` cloud backend in tests and bench."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["llama_server", "server_available"]


def server_available() -> bool:
    """Whether llama_cpp.server and its extra deps (sse-starlette, ...) import."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(gguf: Path, *, threads: int = 2) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``(process, base_url)`` of a llama_cpp.server on ``gguf``; killed on exit."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", str(threads), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start in 120 s")
            time.sleep(0.2)
        yield proc, url
    finally:
        proc.kill()
        proc.wait(timeout=30)
