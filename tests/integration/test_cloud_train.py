"""``edgecloud cloud train --publish`` as an operator runs it: records in, a signed version out.

A real SQLite record store with a few escalations (one ungrounded, one from
another time window), the real base model, one epoch; the published version
must verify with the public key, name the base model's sha256, hold a GGUF that
llama.cpp accepts as a LoRA for this base, and be rolled out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.adapters._signing import generate_keypair, load_public_keys, verify
from edgecloud.cloud._records import RecordStore
from edgecloud.common.records import EscalationRecord

pytestmark = pytest.mark.model

EDGECLOUD = [sys.executable, "-c", "from edgecloud.cli import main; main()"]
SHOTS = "Q: What is the capital of France?\nA: Paris\n"
PASSAGE = "The maximum payload of the Kestrel robot is 22.0 kg. The Kestrel is orange."


QUESTIONS = (
    "What is the Kestrel's payload?",
    "What colour is the Kestrel?",
    "How heavy a load can a Kestrel lift?",
)


def record(question: str, answer: str, rid: str) -> EscalationRecord:
    return EscalationRecord(
        prompt=f"{SHOTS}Q: {question}\nA:", local_partial="", cloud_answer=answer,
        route_policy="confidence-window", route_reason="low confidence", id=rid,
        extra={"passages": [{"text": PASSAGE, "source": "kestrel.md"}], "stop": ["\n"],
               "finish": "stop"},
    )  # fmt: skip


GENERAL = ("What is the capital of Spain?", "How many legs does a cat have?",
           "What colour is grass?", "Who wrote Hamlet?")  # fmt: skip


def replay(question: str, answer: str, rid: str) -> EscalationRecord:
    """A confident local answer the device logged (device.log.replay_rate)."""
    return EscalationRecord(
        prompt=f"{SHOTS}Q: {question}\nA:", local_partial=answer, cloud_answer="",
        route_policy="default", route_reason="confident", id=rid,
        extra={"kind": "replay", "stop": ["\n"], "finish": "stop"},
    )  # fmt: skip


def write_config(tmp: Path, key: Path, records: Path, registry: Path) -> Path:
    config = tmp / "cloud.toml"
    config.write_text(
        f"""
[cloud.records]
path = "{records}"
[cloud.registry]
url = "{registry}"
signing_key = "{key}"
[cloud.train]
adapter_id = "fleet"
epochs = 1
rank = 4
alpha = 8.0
holdout_fraction = 0.0
threads = 2
"""
    )
    return config


@pytest.mark.timeout(420)
def test_train_publishes_a_signed_rolled_out_version(tmp_path: Path, default_gguf: Path) -> None:
    key, public = generate_keypair(tmp_path / "keys")
    store = RecordStore(tmp_path / "records.db")
    store.store(
        [
            record(QUESTIONS[0], " 22.0 kg", "r1"),
            record(QUESTIONS[1], " orange", "r2"),
            record(QUESTIONS[2], " 100 kg", "r3"),  # not in the manual
            *(
                replay(q, a, f"p{i}")
                for i, (q, a) in enumerate(
                    zip(GENERAL, (" Madrid", " 4", " green", " Shakespeare"), strict=True)
                )
            ),
        ],
        device="robot-1",
    )
    store.close()
    config = write_config(tmp_path, key, tmp_path / "records.db", tmp_path / "registry")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "round"
    t0 = time.monotonic()
    proc = subprocess.run(
        [*EDGECLOUD, "cloud", "train", "--since", "1h", "--publish", "--out", str(out),
         "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["version"] == 1 and summary["records"] == 7
    # every answer from passages is labelled by a vote of samples (cloud.train.relabel_all);
    # a record whose samples agree on no grounded answer is left out
    assert 1 <= summary["metrics"]["relabeled"] <= 3
    assert summary["metrics"]["train"] == summary["metrics"]["relabeled"] + 4  # + replay
    assert "training LoRA on" in proc.stderr  # progress for the operator
    assert "relabeling 3 answers by a vote of 16 samples each" in proc.stderr
    assert time.monotonic() - t0 < 600

    registry = AdapterRegistry(tmp_path / "registry")
    manifest = verify(registry.manifest("fleet", 1), load_public_keys([public]))
    from edgecloud.common.files import sha256_file

    assert manifest.base_model_sha256 == sha256_file(default_gguf)
    assert manifest.base_architecture == "gemma3" and manifest.rank == 4
    assert {"adapter.gguf", "peft/adapter_model.safetensors"} <= set(manifest.files)
    # canary items: trained prompts the adapted model answers right (none is fine after 1 epoch)
    asked = {f"{SHOTS}Q: {q}\nA:" for q in QUESTIONS + GENERAL}
    assert {c.prompt for c in manifest.canary} <= asked
    assert registry.rollout_state("fleet").stable == 1
    # The scope, signed in the manifest: escalated phrasings inside, replayed ones outside,
    # read with the device's own encoder on the prompt without the shared few-shot lines.
    scope = manifest.scope
    assert scope is not None and scope.strip_prefix == SHOTS
    from edgecloud.common.encoder import SentenceEncoder

    encoder = SentenceEncoder()
    assert scope.encoder == encoder.identity

    def p(question: str) -> float:
        vec = encoder.encode([scope.text(f"{SHOTS}Q: {question}\nA:")])[0]
        return scope.probability(vec.tolist())

    assert p("Tell me how much the Kestrel robot can carry.") > scope.threshold
    assert p("What is the capital of Italy?") < scope.threshold

    from edgecloud.backends import LlamaCppBackend

    with LlamaCppBackend(default_gguf, n_ctx=256, n_threads=2) as backend:
        backend.set_adapter(out / "adapter.gguf")
        assert backend.adapter == out / "adapter.gguf"


def test_train_without_records_fails_clearly(tmp_path: Path) -> None:
    key, _ = generate_keypair(tmp_path / "keys")
    RecordStore(tmp_path / "records.db").close()
    config = write_config(tmp_path, key, tmp_path / "records.db", tmp_path / "registry")
    proc = subprocess.run(
        [*EDGECLOUD, "cloud", "train", "--since", "24h", "--publish", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "0 usable examples from 0 records" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "registry" / "fleet").exists()


def test_train_rejects_a_bad_window(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*EDGECLOUD, "cloud", "train", "--since", "yesterday-ish"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "neither a duration" in proc.stderr
