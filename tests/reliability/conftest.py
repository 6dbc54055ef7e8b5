from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(__file__).parents[2] / "bench" / "results" / "reliability.json"


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    """Whether pytest was given ``--soak`` (long runs, larger fuzzing budgets)."""
    return bool(request.config.getoption("--soak"))


@pytest.fixture(scope="session")
def figures(soak: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Measured figures, by test; written as JSON at the end of the session: to
    bench/results/reliability.json with ``--soak``, else to the session's temp dir."""
    found: dict[str, Any] = {}
    yield found
    if found:
        out = RESULTS if soak else tmp_path_factory.getbasetemp() / "reliability.json"
        old = json.loads(out.read_text()) if out.exists() else {}
        out.write_text(json.dumps({**old, **found}, indent=2, sort_keys=True) + "\n")
        print(f"\nreliability figures written to {out}")
