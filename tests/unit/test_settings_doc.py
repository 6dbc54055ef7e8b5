"""docs/settings.md is what scripts/gen_settings_doc.py makes from the settings models."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import Field

from edgecloud.common.settings import Section
from edgecloud.config import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pydantic-settings brings tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_settings_doc.py"
DOC = ROOT / "docs" / "settings.md"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_settings_doc", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_settings_doc", module)
    spec.loader.exec_module(module)
    return module


gen = _load_script()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("EDGECLOUD_"):
            monkeypatch.delenv(key)


def test_the_committed_reference_is_what_the_models_generate() -> None:
    assert DOC.read_text(encoding="utf-8") == gen.render(), (
        "docs/settings.md is stale: run `python scripts/gen_settings_doc.py` and commit it"
    )


def test_every_setting_and_section_has_a_description() -> None:
    assert gen.missing_descriptions() == [], "give these settings a Field(description=...)"


def test_a_field_without_a_description_is_reported() -> None:
    class Inner(Section):
        """A section."""

        documented: int = Field(1, description="Has one.")
        bare: int = 2

    class Undocumented(Section):
        documented: int = Field(1, description="Has one.")

    class Root(Section):
        """The root."""

        inner: Inner = Field(default_factory=Inner)
        items: list[Inner] = Field(default_factory=list, description="An array of tables.")
        other: Undocumented = Field(default_factory=Undocumented)

    assert gen.missing_descriptions(Root) == ["inner.bare", "items[].bare", "other"]


def test_the_reference_is_the_same_on_every_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    here = gen.render()
    monkeypatch.setattr(os, "cpu_count", lambda: 97)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gen.render() == here


def _value_at(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_every_key_path_and_literal_default_matches_the_models() -> None:
    settings = Settings.load()
    checked = 0
    optional = [e.path + "." for e in gen.entries() if e.section and "optional" in e.type]
    assert "split.serve.auth." in optional
    for entry in gen.entries():
        if entry.section or "[]" in entry.path:
            continue
        parent = next((p for p in optional if entry.path.startswith(p)), None)
        if parent is not None:
            # a key of an optional section that is unset by default: the section is None
            assert _value_at(settings, parent[:-1]) is None, entry.path
            continue
        actual = _value_at(settings, entry.path)  # the documented path exists
        literal = entry.default.count("`") == 2 and entry.default.startswith("`")
        if literal and entry.default.endswith("`"):
            documented = tomllib.loads(f"v = {entry.default[1:-1]}")["v"]
            if isinstance(actual, Path):
                actual = str(actual)
            if isinstance(actual, tuple):
                actual = list(actual)
            assert documented == actual, entry.path
            checked += 1
        elif entry.default == "unset":
            assert actual is None, entry.path
    assert checked > 50


def test_the_documented_environment_variables_set_their_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_path = {e.path: e for e in gen.entries()}
    monkeypatch.setenv(by_path["device.router.window"].env, "5")
    monkeypatch.setenv(by_path["cloud.train.rank"].env, "4")
    monkeypatch.setenv(by_path["device.generation.stop"].env, '["\\n"]')
    monkeypatch.setenv(by_path["cloud.auth.tokens"].env, '{"robot-1": "' + "ab" * 32 + '"}')
    monkeypatch.setenv(
        by_path["device.cloud.endpoints"].env, '[{"target": "127.0.0.1:50051", "tls": false}]'
    )
    s = Settings.load()
    assert s.device.router.window == 5
    assert s.cloud.train.rank == 4
    assert s.device.generation.stop == ("\n",)
    assert s.cloud.auth.tokens == {"robot-1": "ab" * 32}
    assert s.device.cloud.endpoints[0].target == "127.0.0.1:50051"
    assert by_path["device.cloud.endpoints[].target"].env is None


def test_machine_dependent_defaults_are_written_as_their_rule() -> None:
    by_path = {e.path: e for e in gen.entries()}
    assert by_path["device.model.n_threads"].default == "CPU count, at most 8"
    assert "$XDG_CACHE_HOME/edgecloud" in by_path["cache_dir"].default
    assert by_path["device.router.max_mean_entropy"].default == "`inf`"
    assert by_path["device.cloud.endpoints[].target"].default == "required"


def test_check_fails_on_a_stale_file_and_passes_once_regenerated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "settings.md"
    out.write_text(gen.render().replace("`device.router.window`", "`device.router.windw`"))
    assert gen.main(["--check", "--output", str(out)]) == 1
    assert "device.router.windw" in capsys.readouterr().err
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == gen.render()
