"""Synthesis by stage, with a scripted sampler and knowledge base: which written questions
stay (form, novelty, retrieval of their source, the vote, the source and its sentence), the
prompt a kept one is put in, the sources, the time budget, and the seed kept to itself."""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from edgecloud.cloud._prompting import question_of
from edgecloud.cloud.train._examples import TrainingExample
from edgecloud.cloud.train._synthesize import SynthesisReport, synthesize_examples
from edgecloud.types import Passage
from tests.fakes_cloud import CharTokenizer

SHOTS = "Q: What is the capital of France?\nA: Paris\n"
VARN = (
    "Varn lighthouse / Facts: The Varn lighthouse is 38 m tall. "
    "The lamp of the Varn lighthouse is seen from 22 km."
)
SKARV = (
    "Skarv lighthouse / Facts: The Skarv lighthouse is 51 m tall. "
    "The lamp of the Skarv lighthouse is seen from 30 km."
)
KEEPERS = "Varn lighthouse / Keepers: The Varn lighthouse has 2 keepers."  # the same page
FORMAT = "Context: {context}\n\n{prompt}"


class BagOfWords:
    """A sentence encoder of word counts (hashed, L2-normalised): similar words, similar
    vectors, which is all the closest-sentence check needs."""

    dim = 256

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


class Knowledge:
    """``routes``: what a question retrieves; a passage retrieves itself, then the rest.
    Each passage is in a document of its own, named after its first word."""

    def __init__(self, chunks: list[str], routes: dict[str, list[str]]) -> None:
        self.chunks = chunks
        self.routes = routes
        self.encoder = BagOfWords()

    def search(self, query: str, k: int = 3, min_score: float = 0.0) -> list[Passage]:
        if query in self.routes:
            found = self.routes[query]
        elif query in self.chunks:
            found = [query, *(c for c in self.chunks if c != query)]
        else:
            found = []
        return [Passage(text, f"{text.split()[0].lower()}.md", 0.9) for text in found[:k]]


class Sampler:
    """Stands in for ``sample_answers``: written questions per source passage, votes per
    question; records every prompt it was given."""

    def __init__(
        self, written: dict[str, list[str]], votes: dict[str, list[str]], clock: Any = None
    ) -> None:
        self.written = written
        self.votes = votes
        self.clock = clock
        self.prompts: list[str] = []

    def __call__(
        self, model: Any, tokenizer: Any, ids: Any, *, samples: int, **_: Any
    ) -> list[str]:
        prompt = tokenizer.decode(ids[0].tolist())
        self.prompts.append(prompt)
        if prompt.endswith("Question:"):
            if self.clock is not None:
                self.clock.now += 100.0
            return [f" {q}\n\n" for q in self.written[written_from(self)[-1]]][:samples]
        return self.votes.get(question_of(prompt), [" no idea\n"] * samples)[:samples]


def written_from(sampler: Sampler) -> list[str]:
    """The passages the sampler was asked to write questions from, in order."""
    return [
        p.rsplit("Passage: ", 1)[1].removesuffix("\nQuestion:")
        for p in sampler.prompts
        if p.endswith("Question:")
    ]


def escalation(question: str, passages: tuple[str, ...], *, head: str = SHOTS) -> TrainingExample:
    return TrainingExample(f"{head}Q: {question}\nA:", " 38 m", "\n", passages, "r")


def synthesize(
    knowledge: Knowledge, examples: list[TrainingExample], sampler: Sampler, **kwargs: Any
) -> tuple[list[TrainingExample], SynthesisReport]:
    import torch

    args: dict[str, Any] = {
        "per_passage": 12, "samples": 4, "temperature": 0.7, "prompt_format": FORMAT,
        "device": torch.device("cpu"), "top_k": 2, "min_score": 0.3, "seed": 0,
        "sampler": sampler,
    }  # fmt: skip
    args.update(kwargs)
    return synthesize_examples(None, CharTokenizer(), knowledge, examples, **args)  # type: ignore[arg-type]


def test_a_question_stays_only_when_new_well_formed_about_its_source_and_agreed_on() -> None:
    far = "How far away can the lamp of the Varn lighthouse be seen?"
    rise = "How high does the Varn lighthouse rise?"  # tells its page from the Skarv's
    written = [
        far,
        rise,
        far.lower(),  # the same question again
        "How tall is the Varn Lighthouse ?",  # escalated already
        "The Varn lighthouse",  # not a question
        "Tall?",  # too short
        "How tall is it?",  # retrieves the Skarv first
        "How tall is the lighthouse?",  # retrieves the Varn first, but which lighthouse?
        "What is the height of the Varn lighthouse?",  # voted the Skarv's figure
        "How high is the Varn lighthouse tower?",  # voted the Varn's other figure
        "Is the Varn lighthouse 38 m tall?",  # holds its answer
        "What colour is the Varn lighthouse?",  # no agreement
    ]
    votes = {
        far: [" 22 km\n", " 22 km", " 38 m\n", " 12 km\n"],
        rise: [" 38 m\n"] * 4,
        "What is the height of the Varn lighthouse?": [" 51 m\n"] * 3 + [" 38 m\n"],
        "How high is the Varn lighthouse tower?": [" 22 km\n"] * 4,
        "Is the Varn lighthouse 38 m tall?": [" 38 m\n"] * 4,
        "What colour is the Varn lighthouse?": [" red\n", " white\n", " 38 m\n", " 51 m\n"],
    }
    routes = {q: [VARN, SKARV] for q in [*votes, "How tall is the lighthouse?"]}
    routes["How tall is it?"] = [SKARV, VARN]
    routes[rise] = [VARN, KEEPERS, SKARV]
    knowledge = Knowledge([VARN, KEEPERS, SKARV], routes)
    sampler = Sampler({VARN: written}, votes)
    examples = [
        escalation("How tall is the Varn lighthouse?", (VARN,), head="Be brief.\n" + SHOTS),
        escalation("What height is the Varn lighthouse?", (VARN,)),
        TrainingExample(f"{SHOTS}Q: Skarv height?\nA:", " 51 m", "\n", (SKARV,), replay=True),
    ]
    kept, report = synthesize(knowledge, examples, sampler)

    assert [(ex.prompt, ex.answer, ex.terminator) for ex in kept] == [
        (f"{SHOTS}Q: {far}\nA:", " 22 km", "\n"),  # the shorter escalated prompt's form
        (f"{SHOTS}Q: {rise}\nA:", " 38 m", "\n"),
    ]
    assert kept[0].passages == (VARN, SKARV) and kept[0].synthetic and not kept[0].replay
    # The vote ran as the cloud service would: the passages retrieved for the question.
    assert f"Context: {VARN}\n{SKARV}\n\n{SHOTS}Q: {far}\nA:" in sampler.prompts
    # Only the escalated passage is a source (a replayed answer's is not).
    assert written_from(sampler) == [VARN]
    assert (report.passages, report.candidates, report.kept) == (1, 12, 2)
    assert report.dropped_by_reason == {
        "duplicate": 1, "escalated": 1, "malformed": 2, "other_source": 1, "ambiguous": 1,
        "not_in_source": 1, "other_fact": 1, "answer_in_question": 1, "no_vote": 1,
    }  # fmt: skip
    assert not report.timed_out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sources_are_the_touched_passages_then_their_neighbours_and_stale_ones_are_skipped() -> (
    None
):
    knowledge = Knowledge([VARN, SKARV], {})
    sampler = Sampler({VARN: ["Where is it?"], SKARV: ["Where is it?"]}, {})
    gone = "Varn lighthouse / Facts: The Varn lighthouse is 35 m tall."  # edited since
    examples = [escalation("How tall is the Varn lighthouse?", (VARN, gone))]
    done: list[tuple[int, int]] = []
    _, report = synthesize(knowledge, examples, sampler, neighbours=1,
                           progress=lambda i, n: done.append((i, n)))  # fmt: skip
    assert written_from(sampler) == [VARN, SKARV]
    assert report.stale_passages == 1 and report.passages == 2 and done == [(1, 2), (2, 2)]
    _, alone = synthesize(knowledge, examples, Sampler({VARN: ["Where is it?"]}, {}))
    assert alone.passages == 1  # without neighbours, only what was asked about


def test_synthesis_stops_when_its_time_budget_is_spent() -> None:
    clock = Clock()
    question = "How far away can the lamp of the Varn lighthouse be seen?"
    knowledge = Knowledge([VARN, SKARV], {question: [VARN]})
    sampler = Sampler({VARN: [question], SKARV: [question]}, {question: [" 22 km\n"] * 4}, clock)
    examples = [escalation("How tall is the Varn lighthouse?", (VARN,)),
                escalation("How tall is the Skarv lighthouse?", (SKARV,))]  # fmt: skip
    kept, report = synthesize(knowledge, examples, sampler, time_budget_s=50.0, clock=clock)
    # Writing took 100 s (the scripted clock): the question is not voted on, and the
    # second passage is not started.
    assert kept == [] and report.timed_out and report.passages == 1
    assert report.candidates == 1 and report.dropped_by_reason == {}
    assert report.seconds == 100.0
    clock.now = 0.0
    kept, report = synthesize(knowledge, examples, sampler, time_budget_s=250.0, clock=clock)
    assert [ex.answer for ex in kept] == [" 22 km"] and not report.timed_out
    assert report.passages == 2


def test_synthesis_leaves_torch_random_state_as_it_found_it() -> None:
    import torch

    knowledge = Knowledge([VARN], {})
    examples = [escalation("How tall is the Varn lighthouse?", (VARN,))]
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    synthesize(knowledge, examples, Sampler({VARN: ["Where?"]}, {}), seed=7)
    assert torch.equal(torch.rand(3), expected)  # training draws as without synthesis
