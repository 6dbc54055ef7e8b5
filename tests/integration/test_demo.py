"""`make demo` as a newcomer runs it: a cloud process, a device that discovers it over
zeroconf on 127.0.0.1, escalations visible in the table, the device offline, the
metrics, and nothing left running afterwards."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "demo.py"


def answered_on(table: str) -> list[str]:
    """The "answered on" cell of each row of a printed table."""
    cells = [line.split("│") for line in table.splitlines() if line.startswith("│")]
    return [c[2].strip() for c in cells if len(c) > 3 and c[2].strip() in WHERE]


WHERE = {"device", "cloud", "device→cloud"}


def test_the_demo_tells_the_story_and_leaves_nothing_running() -> None:
    run = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=900,
        env={"COLUMNS": "160", "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
             "HOME": str(Path.home())},
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert re.search(r"found the cloud at 127\.0\.0\.1:\d+", out), out[-4000:]
    table, offline = out.split("3. everyday and fleet questions")[1].split("4. cloud stopped")
    online = answered_on(table)
    assert "device" in online, "no everyday question answered on the device"
    assert {"cloud", "device→cloud"} & set(online), "no question escalated"
    assert "confidence-window" in table
    assert "the device carries on offline" in offline
    assert set(answered_on(offline.split("5. metrics")[0])) == {"device"}
    assert "requests" in out and "escalations" in out and "5. metrics" in out
    workdir = re.search(r"work files: (\S+)", out)
    assert workdir is not None
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if workdir.group(1) in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    assert left == [], f"the demo left processes running: {left}"
