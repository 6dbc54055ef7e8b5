"""Synthesis on the real models: the cloud's base model writes questions from a small
knowledge base of an invented domain (two pottery kilns) and votes on their answers.

Whatever the small model writes, what is kept must be a new question in the device's
prompt form whose answer is grounded in the passage it was written from.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecloud.cloud._knowledge import KnowledgeBase
from edgecloud.cloud._prompting import question_of
from edgecloud.cloud.train._examples import TrainingExample, grounded
from edgecloud.cloud.train._synthesize import synthesize_examples

pytestmark = pytest.mark.model

SHOTS = "Q: What is the capital of France?\nA: Paris\nQ: How many legs does a spider have?\nA: 8\n"
KILNS = {
    "tern.md": (
        "# Tern kiln\n\n## Specifications\n\n"
        "The Tern kiln reaches a top temperature of 1310 degrees.\n"
        "A firing in the Tern kiln takes 14 hours.\n"
        "The Tern kiln holds 36 pots in one firing.\n"
        "The door of the Tern kiln is painted green.\n"
    ),
    "plover.md": (
        "# Plover kiln\n\n## Specifications\n\n"
        "The Plover kiln reaches a top temperature of 1180 degrees.\n"
        "A firing in the Plover kiln takes 9 hours.\n"
        "The Plover kiln holds 12 pots in one firing.\n"
        "The door of the Plover kiln is painted blue.\n"
    ),
}
ASKED = {
    "What is the top temperature of the Tern kiln?": " 1310 degrees",
    "What colour is the door of the Tern kiln?": " green",
    "How many pots fit in the Plover kiln?": " 12",
}


def escalation(knowledge: KnowledgeBase, question: str, answer: str) -> TrainingExample:
    """An escalated question as a round gets it: with the passages the cloud retrieved."""
    passages = tuple(p.text for p in knowledge.search(question, 2, 0.3))
    return TrainingExample(f"{SHOTS}Q: {question}\nA:", answer, "\n", passages)


@pytest.fixture(scope="module")
def cloud_model() -> Iterator[tuple[Any, Any]]:
    """The cloud's torch base model, as a round loads it (float32 on the CPU here)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgecloud.cloud.train import base_model
    from edgecloud.config import Settings

    model_dir, *_ = base_model(Settings.load())
    threads = torch.get_num_threads()
    # One thread: on a shared 2-core runner two torch threads wait on each other (5x
    # slower here while a neighbour ran llama.cpp).
    torch.set_num_threads(1)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        yield model.eval(), AutoTokenizer.from_pretrained(str(model_dir))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.timeout(420)
def test_kept_questions_are_new_and_answered_from_their_source_passage(
    cloud_model: tuple[Any, Any], tmp_path: Path
) -> None:
    import torch

    from edgecloud.common.encoder import SentenceEncoder

    docs = tmp_path / "kilns"
    docs.mkdir()
    for name, text in KILNS.items():
        (docs / name).write_text(text)
    knowledge = KnowledgeBase(docs, SentenceEncoder())
    assert len(knowledge) == 8  # a passage a sentence (cloud.knowledge.chunk_chars)
    examples = [escalation(knowledge, q, a) for q, a in ASKED.items()]
    model, tokenizer = cloud_model
    t0 = time.perf_counter()
    kept, report = synthesize_examples(
        model, tokenizer, knowledge, examples, per_passage=6, samples=16, temperature=0.7,
        prompt_format="Context: {context}\n\n{prompt}", device=torch.device("cpu"), top_k=2,
        min_score=0.3, seed=0, time_budget_s=300,
    )  # fmt: skip
    seconds = time.perf_counter() - t0

    assert report.kept == len(kept) >= 1, report
    assert report.passages == len({p for ex in examples for p in ex.passages})
    assert report.candidates == 6 * report.passages and not report.timed_out
    assert sum(report.dropped_by_reason.values()) + report.kept == report.candidates
    for ex in kept:
        question = question_of(ex.prompt)
        assert ex.prompt == f"{SHOTS}Q: {question}\nA:" and ex.terminator == "\n"
        assert question.endswith("?") and question not in ASKED
        assert ex.synthetic and not ex.replay
        assert ex.passages[0] in {p for e in examples for p in e.passages}
        assert grounded(ex.answer, ex.passages[:1]), (question, ex.answer, ex.passages[0])
    print(f"\nsynthesis: {report} ({seconds / report.passages:.1f} s per passage); kept:")
    for ex in kept:
        print(f"  {question_of(ex.prompt)!r} ->{ex.answer!r} from {ex.passages[0]!r}")
