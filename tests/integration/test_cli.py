"""The `edgecloud` command, run as a user would (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model


def _run(args: list[str | bytes], cache: Path, **kw: object) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "EDGECLOUD_CACHE_DIR": str(cache),
        "EDGECLOUD_DEVICE__MODEL__N_THREADS": "2",
    }
    exe = Path(sys.executable).with_name("edgecloud")
    return subprocess.run([str(exe), *args], capture_output=True, env=env, timeout=120, **kw)  # type: ignore[call-overload,no-any-return]


def test_generate_streams_text_and_summary(model_cache: Path) -> None:
    p = _run(
        ["device", "generate", "Q: What is the capital of France?\nA:", "--max-tokens", "6"],
        model_cache,
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "Paris" in out
    summary = out.strip().splitlines()[-1]
    for field in ("tokens", "tok/s", "mean logprob", "min logprob", "mean entropy", "local"):
        assert field in summary


def test_generate_json_lines(model_cache: Path) -> None:
    p = _run(["device", "generate", "The sky is", "--max-tokens", "5", "--json"], model_cache)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    tokens = [x for x in lines if x["type"] == "token"]
    summary = lines[-1]
    assert len(tokens) == 5
    assert all({"text", "logprob", "entropy"} <= x.keys() for x in tokens)
    assert summary["type"] == "summary"
    assert summary["usage"]["completion_tokens"] == 5
    assert summary["text"] == "".join(t["text"] for t in tokens)
    assert summary["source"] == "local"


def test_generate_follows_a_schema_file(model_cache: Path, tmp_path: Path) -> None:
    schema = tmp_path / "action.json"
    schema.write_text('{"type": "object", "properties": {"bay": {"type": "integer", '
                      '"minimum": 1, "maximum": 20}}, "required": ["bay"]}')  # fmt: skip
    p = _run(["device", "generate", "Box in bay 4. JSON:", "--max-tokens", "16", "--json",
              "--schema", str(schema)], model_cache)  # fmt: skip
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.decode().splitlines()[-1])
    assert summary["parsed"] == json.loads(summary["text"]) and isinstance(
        summary["parsed"]["bay"], int
    )
    bad = _run(["device", "generate", "x", "--schema", "{not json"], model_cache)
    assert bad.returncode != 0 and b"--schema is not JSON" in bad.stderr


def test_invalid_utf8_argument_is_a_clear_error(model_cache: Path) -> None:
    p = _run([b"device", b"generate", b"caf\xe9 \xff"], model_cache)
    assert p.returncode == 2
    assert b"UTF-8" in p.stderr
    assert b"Traceback" not in p.stderr


def test_missing_model_is_a_clear_error(model_cache: Path, tmp_path: Path) -> None:
    p = _run(["device", "generate", "hi", "--model", str(tmp_path / "none.gguf")], model_cache)
    assert p.returncode == 1
    assert b"model file not found" in p.stderr
    assert b"Traceback" not in p.stderr


@pytest.mark.parametrize(
    "toml,field",
    [
        ("[device.model]\nbogus = 1\n", "bogus"),
        ("[device.generation]\ntemperature = 99\n", "temperature"),
    ],
)
def test_bad_config_file(model_cache: Path, tmp_path: Path, toml: str, field: str) -> None:
    cfg = tmp_path / "device.toml"
    cfg.write_text(toml)
    p = _run(["device", "generate", "hi", "--config", str(cfg)], model_cache)
    assert p.returncode == 2
    assert field.encode() in p.stderr
    assert b"Traceback" not in p.stderr


def test_absurd_max_tokens(model_cache: Path) -> None:
    p = _run(["device", "generate", "hi", "--max-tokens", "-3"], model_cache)
    assert p.returncode == 2
    assert b"max_tokens" in p.stderr


def test_chat_shows_a_source_badge_and_confidence(model_cache: Path) -> None:
    p = _run(
        ["device", "chat", "--max-tokens", "8"],
        model_cache,
        input=b"What is the capital of Italy?\n/quit\n",
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "bot>" in out and "[local]" in out and "mean logprob" in out


def test_router_calibrate_from_recorded_signals(model_cache: Path, tmp_path: Path) -> None:
    data = tmp_path / "heldout.jsonl"
    rows = [
        {"prompt": f"p{i}", "logprobs": [-0.1 * i] * 6, "entropies": [0.5] * 6} for i in range(10)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    p = _run(
        [
            "router",
            "calibrate",
            str(data),
            "--target-rate",
            "0.2",
            "--window",
            "3",
            "--min-tokens",
            "2",
        ],
        model_cache,
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    threshold = float(out.split("min_mean_logprob = ")[1].split()[0])
    assert threshold == pytest.approx(-0.75)  # halfway between the 2nd and 3rd lowest means
    assert b"escalates 20.0%" in p.stderr
    bad = _run(["router", "calibrate", str(tmp_path / "missing.jsonl")], model_cache)
    assert bad.returncode == 2 and b"cannot read" in bad.stderr


def test_router_train_writes_a_usable_learned_router(model_cache: Path, tmp_path: Path) -> None:
    from edgecloud.router import LearnedRouter

    data = tmp_path / "outcomes.jsonl"
    easy = [f"What is the capital of {c}?" for c in ("France", "Italy", "Spain", "Japan")]
    hard = [f"What is the payload of the {n} robot?" for n in ("Kestrel", "Heron", "Lynx", "Otter")]
    data.write_text("\n".join(json.dumps({"prompt": p, "poor": p in hard}) for p in easy + hard))
    p = _run(["router", "train", str(data), "--out", str(tmp_path / "router.json")], model_cache)
    assert p.returncode == 0, p.stderr
    head = LearnedRouter.load(tmp_path / "router.json")
    from edgecloud.common.encoder import SentenceEncoder

    probs = head.predict(
        SentenceEncoder().encode(
            ["What is the payload of the Badger robot?", "What is the capital of Peru?"]
        )
    )
    assert probs[0] > 0.5 > probs[1]
    bad = _run(["router", "train", str(tmp_path / "router.json")], model_cache)
    assert bad.returncode == 2 and b"cannot train" in bad.stderr
