"""Adapter scopes: the signed head, its fit from records, and the engine applying it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edgecloud.adapters._manifest import AdapterScope, Manifest
from edgecloud.cloud.train import TrainingExample
from edgecloud.cloud.train._scope import fit_scope
from edgecloud.config import DeviceCloudConfig, RouterConfig
from edgecloud.device._hybrid import HybridEngine
from edgecloud.errors import AdapterFormatError
from edgecloud.types import Finish, SamplingParams
from tests.fakes import answer
from tests.fakes_adapters import FakeAdapterBackend, fake_lora
from tests.unit.adapters.test_manifest import _fields

HEADER = "Q: What is the capital of France?\nA: Paris\n"


class WordEncoder:
    """A deterministic stand-in for the sentence encoder: hashed bag of words, unit length."""

    def __init__(self, dim: int = 64, identity: str = "words:1") -> None:
        self.dim = dim
        self.identity = identity
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts += texts
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _ex(
    question: str, *, replay: bool = False, answer: str = " x", passages: tuple[str, ...] = ()
) -> TrainingExample:
    return TrainingExample(
        f"{HEADER}Q: {question}\nA:", answer, "\n", passages=passages, replay=replay
    )


ROBOT = [f"What is the {a} of the Kestrel robot?" for a in ("payload", "speed", "colour")]
ROBOT += [f"How fast can the Heron robot {v}?" for v in ("drive", "turn")]
GENERAL = ["What is the capital of Spain?", "How many legs does a cat have?",
           "What colour is grass?", "Who wrote Hamlet?", "What is 2 plus 2?"]  # fmt: skip


def _scope(**over: Any) -> AdapterScope:
    return AdapterScope(**{"encoder": "e", "weights": [2.0, -2.0], "bias": 0.0, **over})


def test_the_head_reads_the_prompt_without_the_shared_prefix() -> None:
    scope = _scope(strip_prefix=HEADER)
    assert scope.text(HEADER + "Q: hi") == "Q: hi"
    assert scope.text("Q: other prompt") == "Q: other prompt"
    assert scope.probability([1.0, 0.0]) == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert scope.applies([1.0, 0.0]) and not scope.applies([0.0, 1.0])
    assert not _scope(threshold=0.95).applies([1.0, 0.0])
    with pytest.raises(ValueError, match="3 dimensions, the scope expects 2"):
        scope.probability([1.0, 0.0, 0.0])


def test_a_manifest_carries_the_scope_and_refuses_a_broken_one() -> None:
    scope = _scope().model_dump()
    m = Manifest.model_validate(_fields(scope=scope))
    assert Manifest.from_json(m.to_json()).scope == m.scope
    assert Manifest.model_validate(_fields()).scope is None  # every request
    bad_scopes = [{**scope, "weights": []}, {**scope, "threshold": 1.0}, {**scope, "x": 1},
                  {**scope, "bias": float("nan")}]  # fmt: skip
    for bad in bad_scopes:
        raw = json.dumps(_fields(scope=bad), default=str).encode()
        with pytest.raises(AdapterFormatError, match="scope"):
            Manifest.from_json(raw)


def test_fit_separates_what_was_escalated_from_what_was_replayed() -> None:
    examples = [_ex(q) for q in ROBOT] + [_ex(q, replay=True) for q in GENERAL]
    encoder = WordEncoder()
    scope = fit_scope(examples, threshold=0.5, encoder=encoder)  # type: ignore[arg-type]
    assert scope is not None
    assert scope.encoder == "words:1" and len(scope.weights) == 64
    assert scope.strip_prefix == HEADER  # the few-shot lines say nothing about a request
    assert all(not t.startswith("Q: What is the capital of France") for t in encoder.texts)

    def p(question: str) -> float:
        vec = encoder.encode([scope.text(f"{HEADER}Q: {question}\nA:")])[0]
        return scope.probability(vec.tolist())

    assert p("Tell me the Kestrel robot's payload limit.") > 0.5  # a phrasing never sent
    assert p("What is the capital of Peru?") < 0.5
    # Without examples of both kinds there is nothing to tell apart.
    assert fit_scope([_ex(q) for q in ROBOT], encoder=encoder) is None  # type: ignore[arg-type]


def test_a_grounded_scope_leaves_general_escalations_to_the_base_model() -> None:
    # The round's knowledge base grounded the robot answers; the escalated general
    # questions were answered from the cloud model's own weights (no passage supports
    # them). By default only the grounded ones are the adapter's; "learned" takes all.
    manual = ("Kestrel robot: payload 12 kg, speed 3 m/s, colour teal.",
              "Heron robot: drives at 2 m/s and turns at 90 degrees per second.")  # fmt: skip
    robot = [_ex(q, answer=" 12 kg" if "payload" in q else " 3", passages=manual) for q in ROBOT]
    escalated_general = [_ex(q, answer=" Madrid", passages=()) for q in GENERAL[:3]]
    replayed = [_ex(q, replay=True) for q in GENERAL[3:]] + [
        _ex(q, replay=True) for q in ("Who painted the Mona Lisa?", "What is 3 plus 3?")
    ]
    encoder = WordEncoder()

    def p(scope: AdapterScope | None, question: str) -> float:
        assert scope is not None
        vec = encoder.encode([scope.text(f"{HEADER}Q: {question}\nA:")])[0]
        return scope.probability(vec.tolist())

    examples = robot + escalated_general + replayed
    grounded = fit_scope(examples, encoder=encoder)  # type: ignore[arg-type]
    learned = fit_scope(examples, encoder=encoder, inside="learned")  # type: ignore[arg-type]
    assert p(grounded, "What is the capital of Spain?") < 0.5
    assert p(learned, "What is the capital of Spain?") > 0.5
    assert p(grounded, "Tell me the Kestrel robot's payload limit.") > 0.5
    # Nothing grounded (no knowledge base): every learned prompt, as "learned".
    ungrounded = [_ex(q) for q in ROBOT] + replayed
    assert p(fit_scope(ungrounded, encoder=encoder), "What is the Heron robot's speed?") > 0.5  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grounded"):
        fit_scope(examples, encoder=encoder, inside="all")  # type: ignore[arg-type]


class Backend(FakeAdapterBackend):
    """The adapter fake with what the engine's pre-generation decision reads."""

    n_ctx = 2048

    def count_tokens(self, prompt: object) -> int:
        return 8


class Answers:
    """Runs requests through ``engine`` (local only: no cloud endpoints)."""

    def __init__(self, engine: HybridEngine) -> None:
        self.engine = engine

    def generate(self, prompt: str) -> tuple[str, Finish]:
        return asyncio.run(answer(self.engine, prompt, SamplingParams(max_tokens=8)))


def _client(
    backend: FakeAdapterBackend, scope: AdapterScope | None, encoder: WordEncoder
) -> tuple[Answers, HybridEngine]:
    engine = HybridEngine(backend, pool=None, router=RouterConfig(), cloud=DeviceCloudConfig())  # type: ignore[arg-type]
    engine.set_adapter_scope(scope, encoder=encoder)  # type: ignore[arg-type]
    return Answers(engine), engine


def test_the_engine_answers_out_of_scope_requests_with_the_base_model(tmp_path: Any) -> None:
    encoder = WordEncoder()
    examples = [_ex(q) for q in ROBOT] + [_ex(q, replay=True) for q in GENERAL]
    scope = fit_scope(examples, encoder=encoder)  # type: ignore[arg-type]
    backend = Backend(base_answer="base says")
    backend.set_adapter(fake_lora(tmp_path / "a.gguf", answer="adapter says"))
    client, _ = _client(backend, scope, encoder)
    inside, done_in = client.generate(f"{HEADER}Q: What is the Kestrel robot's top speed?\nA:")
    outside, done_out = client.generate(f"{HEADER}Q: What is the capital of Peru?\nA:")
    assert inside == "adapter says" and outside == "base says"
    assert done_in.route is not None and done_in.route.signals["adapter_in_scope"] is True
    assert done_out.route is not None and done_out.route.signals["adapter_in_scope"] is False
    assert 0.0 <= float(done_out.route.signals["adapter_scope"]) < 0.5
    assert backend.used_adapter[-2:] == [True, False]


def test_a_scope_for_another_encoder_is_dropped_and_the_adapter_answers_all(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Backend(base_answer="base says")
    backend.set_adapter(fake_lora(tmp_path / "a.gguf", answer="adapter says"))
    scope = _scope(weights=[0.0] * 64, bias=-10.0, encoder="another:2")  # never applies
    with caplog.at_level(logging.WARNING, logger="edgecloud.device.hybrid"):
        client, engine = _client(backend, scope, WordEncoder())
    assert "adapter scope ignored" in caplog.text
    assert client.generate("anything at all")[0] == "adapter says"
    # Right encoder: now it applies (never, with this bias); None lifts it again.
    engine.set_adapter_scope(_scope(weights=[0.0] * 64, bias=-10.0, encoder="words:1"),
                             encoder=WordEncoder())  # type: ignore[arg-type]  # fmt: skip
    assert client.generate("anything at all")[0] == "base says"
    engine.set_adapter_scope(None)
    assert client.generate("anything at all")[0] == "adapter says"
