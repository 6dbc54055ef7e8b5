"""``edgecloud cloud serve`` as deployed: a subprocess on loopback with a knowledge base,
queried by the CLI, stopped by SIGTERM while a stream is in flight (the stream must finish)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

EDGECLOUD = [sys.executable, "-c", "from edgecloud.cli import main; main()"]
MANUAL = Path(__file__).parents[2] / "bench" / "data" / "fleet_manual"


def test_serve_generate_info_and_sigterm_drain(tmp_path: Path) -> None:
    env = {**os.environ, "EDGECLOUD_CLOUD__MODEL__THREADS": "1", "HF_HUB_OFFLINE": "1",
           "EDGECLOUD_CLOUD__RECORDS__PATH": str(tmp_path / "records.db")}  # fmt: skip
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(MANUAL / "kestrel.md", docs)
    server = subprocess.Popen(
        [*EDGECLOUD, "cloud", "serve", "--insecure", "--port", "0", "--knowledge", str(docs)],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        port = None
        deadline = time.monotonic() + 240
        assert server.stderr is not None
        log = []
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line:
                break
            log.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
        assert port, "the server did not report its port"
        target = f"127.0.0.1:{port}"
        started = "".join(log)
        assert re.search(r"indexing knowledge: (\d+)/\1 chunks", started), started
        assert re.search(r"knowledge: \d+ chunks from .*, index rebuilt", started), started
        assert (docs / ".edgecloud-index" / "manifest.json").is_file()

        info = subprocess.run([*EDGECLOUD, "cloud", "info", "--target", target, "--insecure"],
                              capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["backend"] == "torch"

        out = subprocess.run(
            [*EDGECLOUD, "cloud", "generate", "--target", target, "--insecure", "--json",
             "--max-tokens", "3", "Why is the sky blue?"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines()]
        assert [e["type"] for e in events] == ["token"] * 3 + ["finish"]
        assert all(e["logprob"] <= 0 for e in events[:3])

        asked = subprocess.run(
            [*EDGECLOUD, "cloud", "generate", "--target", target, "--insecure", "--json",
             "--max-tokens", "2", "How much weight can the Kestrel carry?"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert asked.returncode == 0, asked.stderr
        finish = json.loads(asked.stdout.splitlines()[-1])
        assert finish["passages"] and finish["passages"][0]["source"] == "kestrel.md"
        assert "payload" in finish["passages"][0]["text"]
        assert finish["prompt_tokens"] > 20

        bad = subprocess.run([*EDGECLOUD, "cloud", "generate", "--target", target, "--insecure",
                              "--max-tokens", "999999", "hi"],
                             capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert bad.returncode == 2 and "max_tokens" in bad.stderr

        # A long stream in flight, then SIGTERM: the stream completes, the server exits 0.
        long = subprocess.Popen(
            [*EDGECLOUD, "cloud", "generate", "--target", target, "--insecure", "--json",
             "--max-tokens", "24", "Once upon a time"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert long.stdout is not None
        first = long.stdout.readline()
        assert json.loads(first)["type"] == "token"
        server.send_signal(signal.SIGTERM)
        rest, _ = long.communicate(timeout=120)
        lines = [first, *rest.splitlines()]
        assert long.returncode == 0
        assert json.loads(lines[-1]) | {"reason": "length"} == json.loads(lines[-1])
        assert len(lines) == 25
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stderr is not None:
            server.stderr.close()
