"""``edgecloud adapters`` end to end: keygen, publish, list, rollout, rollback (typer's runner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.adapters._signing import load_public_keys, verify
from edgecloud.cli.app import app
from tests.fakes_adapters import make_lora_dir


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGECLOUD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGECLOUD_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no wrapped cells
    return tmp_path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_keygen_publish_list_rollout_rollback(env: Path) -> None:
    code, text = invoke("adapters", "keygen", "--out", str(env / "keys"))
    assert code == 0, text
    public = text.split("public key:")[1].split()[0]
    assert invoke("adapters", "keygen", "--out", str(env / "keys"))[0] == 2  # no overwrite

    base = env / "base.gguf"
    base.write_bytes(b"base model bytes")
    adapter = make_lora_dir(env / "export", n_layers=1)
    toml = env / "settings.toml"
    toml.write_text(
        f'[cloud.registry]\nsigning_key = "{env / "keys" / "signing_key.pem"}"\n'
        f'[cloud.train]\nadapter_id = "support"\n'
    )
    canary = env / "canary.jsonl"
    canary.write_text('{"prompt": "hi", "expect": "hello"}\n')
    for _ in range(2):
        code, text = invoke("adapters", "publish", str(adapter), "--base-model", str(base),
                            "--metrics", '{"accuracy": 0.8}', "--canary", str(canary),
                            "--config", str(toml))  # fmt: skip
        assert code == 0, text
    assert "support v2" in text

    registry = AdapterRegistry(env / "cache" / "registry")
    manifest = verify(registry.manifest("support", 2), load_public_keys([public]))
    assert manifest.base_architecture == "gemma3" and manifest.rank == 4
    assert sorted(manifest.files) == [
        "adapter.gguf", "peft/adapter_config.json", "peft/adapter_model.safetensors"
    ]  # fmt: skip
    assert manifest.canary[0].expect == "hello" and manifest.metrics == {"accuracy": 0.8}

    assert invoke("adapters", "rollout", "1", "--percent", "100", "-c", str(toml))[0] == 0
    code, text = invoke("adapters", "rollout", "2", "--percent", "10", "--cohort", "lab",
                        "--adapter-id", "support")  # fmt: skip
    assert code == 0, text
    assert "candidate v2 (candidate 10% + cohort lab)" in text
    registry.report("robot-7", "support", 1, "running")

    code, text = invoke("adapters", "list", "--json")
    assert code == 0, text
    data = json.loads(text)
    [entry] = data["adapters"]
    assert [(v["version"], v["stage"], v["devices"]) for v in entry["versions"]] == [
        (1, "stable", 1), (2, "candidate 10% + cohort lab", 0)
    ]  # fmt: skip
    assert entry["fleet"][0]["device_id"] == "robot-7"
    code, text = invoke("adapters", "list", "--target", "support")
    assert code == 0 and "robot-7" in text and "accuracy=0.8" in text

    code, text = invoke("adapters", "rollback", "--adapter-id", "support")
    assert code == 0 and "stable v1" in text and "candidate" not in text
    assert registry.assigned("support", "anyone", "lab") == 1
    code, text = invoke("adapters", "rollback", "--adapter-id", "support", "--to", "2")
    assert code == 0 and "stable v2" in text
    assert invoke("adapters", "rollback", "--adapter-id", "support", "--to", "9")[0] == 1
    assert invoke("adapters", "rollout", "9", "--percent", "5", "--adapter-id", "support")[0] == 1
    assert invoke("adapters", "list", "--adapter-id", "../x")[0] == 2  # a bad request


def test_publish_refusals(env: Path) -> None:
    invoke("adapters", "keygen", "--out", str(env / "keys"))
    key = str(env / "keys" / "signing_key.pem")
    base = env / "base.gguf"
    base.write_bytes(b"base")
    not_lora = env / "bad"
    not_lora.mkdir()
    (not_lora / "adapter.gguf").write_bytes(b"GGUF not really")
    code, text = invoke("adapters", "publish", str(not_lora), "--base-model", str(base),
                        "--key", key)  # fmt: skip
    assert code == 2 and "error" in text  # AdapterFormatError: a bad request
    adapter = make_lora_dir(env / "export", n_layers=1)
    code, text = invoke("adapters", "publish", str(adapter), "--base-model", str(base),
                        "--key", key, "--architecture", "llama")  # fmt: skip
    assert code == 1 and "gemma3" in text
    code, text = invoke("adapters", "publish", str(adapter), "--base-model", str(base))
    assert code == 2 and "signing key" in text
    assert AdapterRegistry(env / "cache" / "registry").versions("default") == []


def test_keygen_prints_whole_paths_when_its_output_is_piped(tmp_path: Path) -> None:
    """Scripts read the key paths from a pipe: no wrapping at the terminal's width."""
    import subprocess
    import sys

    deep = tmp_path / ("a-directory-with-a-rather-long-name-" * 3) / "keys"
    exe = Path(sys.executable).with_name("edgecloud")
    run = subprocess.run([str(exe), "adapters", "keygen", "--out", str(deep)],
                         capture_output=True, text=True, env={"COLUMNS": "80"}, check=True)  # fmt: skip
    lines = run.stdout.splitlines()
    assert len(lines) == 2, run.stdout
    private = lines[0].removeprefix("private key: ").split("  (")[0]
    assert Path(private) == deep / "signing_key.pem" and Path(private).is_file()
