from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session cache dir holding the embedded default model, assembled once."""
    from edgecloud.device import ensure_default_model

    cache = tmp_path_factory.mktemp("edgecloud-cache")
    ensure_default_model(cache)
    return cache


@pytest.fixture(scope="session")
def default_gguf(model_cache: Path) -> Path:
    from edgecloud.device import default_model_path

    return default_model_path(model_cache)


@pytest.fixture(scope="session")
def backend(default_gguf: Path) -> Iterator[object]:
    from edgecloud.backends import LlamaCppBackend

    b = LlamaCppBackend(default_gguf, n_ctx=2048, n_threads=2)
    yield b
    b.close()


# Fixtures that load the embedded models: a test using one needs the `model` marker
# (`make test-unit` deselects them); it is added here so that none is forgotten.
_MODEL_FIXTURES = frozenset({"model_cache", "default_gguf", "backend"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", default=False,
        help="also run the long reliability runs (tests marked soak; see docs/reliability.md)",
    )  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    soak = config.getoption("--soak")
    skip_soak = pytest.mark.skip(reason="a long reliability run: pass --soak to run it")
    for item in items:
        if _MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
        if not soak and "soak" in item.keywords:
            item.add_marker(skip_soak)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a throwaway PostgreSQL server's ``postgres`` database (skips without one)."""
    from tests.pgserver import find_bin, postgres_server

    if find_bin() is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    with postgres_server() as url:
        yield url
