"""Questions the cloud writes from its knowledge base, for a round to learn from too.

Escalations teach a device the facts it asked about, in the phrasings it asked
them. The passages behind those answers hold more (the same machine's other
figures, the same figure said in other words), and a device later asks in
phrasings no device escalated. Here the cloud model (the base model the round
trains: a base model follows few-shot examples, not instructions) writes
questions from each passage the round's escalations touched, and each question is
answered as a record is relabeled: by a vote of samples, with the passages the
knowledge base retrieves for that question, as the cloud service would at run time.

Most of the work is throwing questions away. A small model writes questions that
are vague ("What is its weight?"), that ask about something else, or that the
passage does not answer; trained on, such pairs teach a device to give one
machine's figure for another's, or one fact's figure for another fact, the
commonest mistake after a round. A written question stays only when

- it is one line ending in "?", neither tiny nor rambling, and not a phrasing the
  round already has (an escalated one, or one written before);
- retrieval for it ranks its source passage first (``source_rank``), and it names
  something of the source that each passage of another document retrieved for it
  lacks: "How many pots fit in a firing?" finds one kiln's passage first by a hair,
  but says nothing that tells it from the next kiln's, so its answer would be one
  kiln's figure for any kiln (passages of the source's own document are left out of
  this: a manual's page is mostly about one thing, and "How long does it take to heat
  a pot in the Plover kiln?" shares only "Plover kiln" with its source, as with every
  passage of that page);
- the vote agrees on an answer grounded in the retrieved passages
  (:func:`~edgecloud.cloud.train._relabel.relabel`) and in the source passage
  itself, so its figures are the source's, not a neighbour's;
- the answer is grounded in the source's sentence the question is closest to (by
  the knowledge base's encoder): a passage holds a few facts of one entity, and
  "How long does the Lynx last?" answered "2.7 hours" (its speed's figure with the
  runtime's unit) or "How many batteries does the Lynx carry?" answered with its
  payload passed every check above;
- it does not hold its own answer (that teaches nothing).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgecloud.cloud._prompting import question_of, with_question
from edgecloud.cloud.train._examples import (
    TrainingExample,
    content_words,
    grounded,
    unique_passages,
)
from edgecloud.cloud.train._relabel import prompt_ids, relabel, sample_answers

if TYPE_CHECKING:
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.common.encoder import SentenceEncoder
    from edgecloud.types import Passage

__all__ = ["SynthesisProgress", "SynthesisReport", "synthesize_examples"]

log = logging.getLogger("edgecloud.cloud")

SynthesisProgress = Callable[[int, int], None]
"""Called after each source passage with (passages done, passages in all)."""

# Generic on purpose (no domain the project ships): the model copies the form, a
# question naming its subject and asking one fact, not the subject matter. The
# second and third ask about the passage's second sentence, so that samples do not
# all ask about the first.
_SHOTS = (
    "Passage: Mount Aragats / Climbing: The summit of Mount Aragats is 4,090 m above "
    "sea level. The hut at the north col sleeps 24 climbers.\n"
    "Question: How high above sea level is the summit of Mount Aragats?\n\n"
    "Passage: Orion Bakery / Prices: The Orion Bakery opens at 6:30 on weekdays. Its "
    "sourdough loaf costs 4.20 euros.\n"
    "Question: What does a sourdough loaf cost at the Orion Bakery?\n\n"
    "Passage: Vesta ferry: The Vesta ferry crosses the bay in 35 minutes. It carries at "
    "most 120 passengers.\n"
    "Question: How many passengers can the Vesta ferry carry?\n\n"
)
_QUESTION_TOKENS = 48
_RIVALS = 2  # passages retrieved beyond top_k that a question must tell its source from
_MIN_CHARS = 12
_MAX_CHARS = 200
_MIN_WORDS = 3
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")  # as the knowledge base chunks

MALFORMED = "malformed"
"""Not one line ending in "?", or too short or long."""
ESCALATED = "escalated"
"""The same question (normalized) as one the round's examples already ask."""
DUPLICATE = "duplicate"
"""The same question (normalized) as one written before in this synthesis."""
OTHER_SOURCE = "other_source"
"""Retrieval for the question does not rank its source passage within ``source_rank``."""
AMBIGUOUS = "ambiguous"
"""A retrieved passage of another document holds every word the question shares with its
source."""
NO_VOTE = "no_vote"
"""No grounded answer that two samples agree on."""
NOT_IN_SOURCE = "not_in_source"
"""The agreed answer is grounded in the retrieved passages but not in the source."""
OTHER_FACT = "other_fact"
"""The agreed answer is not grounded in the source's sentence closest to the question."""
ANSWER_IN_QUESTION = "answer_in_question"
"""Every content word and number of the answer is in the question already."""


@dataclass(slots=True)
class SynthesisReport:
    """What a synthesis did, stage by stage."""

    passages: int = 0
    """Source passages questions were written from."""
    candidates: int = 0
    """Questions written (before any filter); when time ran out, those not yet checked
    are neither kept nor dropped."""
    kept: int = 0
    """Questions kept, each with its agreed answer."""
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    """Candidates dropped, by the first filter they failed (the module's reason names)."""
    seconds: float = 0.0
    stale_passages: int = 0
    """Passages of the examples the knowledge base no longer holds (edited since): skipped."""
    timed_out: bool = False
    """The time budget ran out before every passage was done."""

    def drop(self, reason: str) -> None:
        """Count a candidate dropped for ``reason``."""
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + 1


def synthesize_examples(
    model: Any,
    tokenizer: Any,
    knowledge: KnowledgeBase,
    examples: Sequence[TrainingExample],
    *,
    per_passage: int,
    samples: int,
    temperature: float,
    prompt_format: str,
    device: Any,
    top_k: int,
    min_score: float,
    seed: int,
    progress: SynthesisProgress | None = None,
    time_budget_s: float | None = None,
    neighbours: int = 0,
    source_rank: int = 1,
    sampler: Callable[..., list[str]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[TrainingExample], SynthesisReport]:
    """Examples of questions the cloud wrote from the passages ``examples`` touched.

    Args:
        model, tokenizer: the cloud's torch base model (in eval mode) and its tokenizer;
            it writes the questions and votes on their answers.
        knowledge: the cloud's knowledge base, searched with each written question as
            the service searches a request.
        examples: the round's examples; the passages of the escalated ones (not
            replayed) are the sources, their prompts the form a question is put in,
            and every question they ask is one not to write again.
        per_passage: questions sampled from each source passage.
        samples, temperature: the vote (``cloud.train.relabel_samples`` and
            ``relabel_temperature``); ``temperature`` also samples the questions.
        prompt_format: ``cloud.model.prompt_format``: how the passages go into the vote's
            prompts.
        device: where ``model`` is.
        top_k, min_score: retrieval per question (``cloud.knowledge``).
        seed: seeds the sampling; torch's global random state is restored afterwards,
            so a round's training draws the same whether synthesis ran or not.
        progress: called after each source passage.
        time_budget_s: stop at the next passage or question once this many seconds
            have passed (``report.timed_out``); None: no limit.
        neighbours: also write from this many passages nearest to each touched one
            (what the knowledge base holds next to what devices asked about).
        source_rank: a question is kept only when retrieval ranks its source passage
            within the first ``source_rank`` (1: first).
        sampler: stands in for :func:`~edgecloud.cloud.train._relabel.sample_answers`.
        clock: seconds, for the budget and the report.

    Returns:
        The kept examples (``synthetic=True``, ``replay=False``; the device's prompt
        form with the written question, the agreed answer, the terminator of the
        escalation whose prompt it took, and the passages retrieved for it with the
        source first) and the report.
    """
    import torch

    report = SynthesisReport()
    t0 = clock()
    escalated = [ex for ex in examples if not ex.replay and ex.passages]
    if not escalated:
        return [], report
    vote = _Vote(
        model, tokenizer, knowledge.encoder, prompt_format, samples, temperature, device,
        sampler or sample_answers,
        # The vote's token budget comes from its placeholder answer: answers as long as
        # the longest one devices got.
        max((ex.answer for ex in escalated), key=len),
    )  # fmt: skip
    sources = _sources(knowledge, escalated, neighbours, min_score, report)
    asked = {_normalize(question_of(ex.prompt)) for ex in examples}
    written: set[str] = set()

    def out_of_time() -> bool:
        report.timed_out = time_budget_s is not None and clock() - t0 > time_budget_s
        return report.timed_out

    kept: list[TrainingExample] = []
    rng_devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        for done, source in enumerate(sources):
            if out_of_time():
                break
            report.passages += 1
            template = _template(escalated, source.text)
            questions = vote.write(source.text, per_passage)
            report.candidates += len(questions)
            for question in questions:
                reason = _screen(question, asked, written)
                if reason is None and out_of_time():
                    break
                if reason is None:
                    ranked = knowledge.search(question, top_k + _RIVALS, min_score)
                    found = [p.text for p in ranked[:top_k]]
                    rivals = [p.text for p in ranked if p.source != source.source]
                    if source.text not in found[:source_rank]:
                        reason = OTHER_SOURCE
                    elif not _distinct(question, source.text, rivals):
                        reason = AMBIGUOUS
                    else:
                        result = vote.answer(question, source.text, found, template)
                        if isinstance(result, TrainingExample):
                            log.debug("synthesized %r ->%r", question, result.answer)
                            kept.append(result)
                            continue
                        reason = result
                log.debug("synthesis dropped %r: %s", question, reason)
                report.drop(reason)
            if report.timed_out:
                break
            if progress is not None:
                progress(done + 1, len(sources))
    report.kept = len(kept)
    report.seconds = clock() - t0
    log.info("synthesized %d examples from %d passages (%d candidates, dropped %s) in %.0f s%s",
             report.kept, report.passages, report.candidates, report.dropped_by_reason,
             report.seconds, ", out of time" if report.timed_out else "")  # fmt: skip
    return kept, report


def _sources(
    knowledge: KnowledgeBase,
    escalated: Sequence[TrainingExample],
    neighbours: int,
    min_score: float,
    report: SynthesisReport,
) -> list[Passage]:
    """The passages to write from: those escalations touched, then their neighbours.

    A passage is looked up by its own text, which ranks it first when the knowledge
    base still holds it; one that is gone was edited since the record was made, and
    questions from it could never retrieve it.
    """
    touched: list[Passage] = []
    near: list[Passage] = []
    for passage in unique_passages(escalated):
        found = knowledge.search(passage, 1 + neighbours, min_score)
        own = [p for p in found if p.text == passage]
        if not own:
            report.stale_passages += 1
            continue
        touched.append(own[0])
        near += [p for p in found if p.text != passage]
    sources: dict[str, Passage] = {}
    for p in [*touched, *near]:
        sources.setdefault(p.text, p)
    return list(sources.values())


def _template(escalated: Sequence[TrainingExample], source: str) -> TrainingExample:
    """The escalation whose prompt a question from ``source`` is put in.

    One that retrieved ``source`` (the prompt devices send about it), else any; the
    shortest, as it carries the least beyond the shared few-shot lines.
    """
    about = [ex for ex in escalated if source in ex.passages] or list(escalated)
    return min(about, key=lambda ex: len(ex.prompt))


def _distinct(question: str, source: str, rivals: Sequence[str]) -> bool:
    """Whether ``question`` names, for each rival passage, something of ``source`` the
    rival lacks (an entity's name, a figure)."""
    shared = content_words(question) & content_words(source)
    return all(shared - content_words(r) for r in rivals if r != source)


def _normalize(question: str) -> str:
    return " ".join(_WORD.findall(question.lower()))


def _screen(question: str, asked: set[str], written: set[str]) -> str | None:
    """Why ``question`` is dropped before any model runs on it; None: it is not.

    Adds it to ``written`` so that a repeat is not voted on twice.
    """
    if (
        not question.endswith("?")
        or not _MIN_CHARS <= len(question) <= _MAX_CHARS
        or len(_WORD.findall(question)) < _MIN_WORDS
    ):
        return MALFORMED
    key = _normalize(question)
    if key in asked:
        return ESCALATED
    if key in written:
        return DUPLICATE
    written.add(key)
    return None


@dataclass(frozen=True, slots=True)
class _Vote:
    """The cloud model, as it writes questions from a passage and votes on their answers."""

    model: Any
    tokenizer: Any
    encoder: SentenceEncoder
    prompt_format: str
    samples: int
    temperature: float
    device: Any
    sampler: Callable[..., list[str]]
    placeholder: str
    """An answer as long as the longest the vote should give (its token budget)."""

    def write(self, source: str, n: int) -> list[str]:
        """``n`` sampled questions about ``source``, each cut at its line end."""
        text = f"{_SHOTS}Passage: {source}\nQuestion:"
        raw = self.sampler(
            self.model, self.tokenizer, prompt_ids(self.tokenizer, text), samples=n,
            budget=_QUESTION_TOKENS, temperature=self.temperature, terminator="\n",
            device=self.device,
        )  # fmt: skip
        return [r.split("\n", 1)[0].strip() for r in raw]

    def answer(
        self, question: str, source: str, found: list[str], template: TrainingExample
    ) -> TrainingExample | str:
        """The example for ``question`` (its answer agreed on with the ``found`` passages
        and grounded in ``source``), or why there is none."""
        candidate = TrainingExample(
            prompt=with_question(template.prompt, question),
            answer=self.placeholder,
            terminator=template.terminator,
            passages=tuple(found),
            synthetic=True,
        )
        voted = relabel(
            self.model, self.tokenizer, [candidate], self.prompt_format, samples=self.samples,
            temperature=self.temperature, device=self.device, sampler=self.sampler,
        )  # fmt: skip
        if not voted:
            return NO_VOTE
        answer = voted[0].answer
        if not grounded(answer, (source,)):
            return NOT_IN_SOURCE
        if not grounded(answer, (self.closest_sentence(question, source),)):
            return OTHER_FACT
        if grounded(answer, (question,)):
            return ANSWER_IN_QUESTION
        return dataclasses.replace(voted[0], passages=(source, *(p for p in found if p != source)))

    def closest_sentence(self, question: str, source: str) -> str:
        """The sentence of ``source`` most similar to ``question`` (cosine, as retrieval)."""
        sentences = [t for t in (t.strip() for t in _SENTENCE_END.split(source)) if t]
        if len(sentences) < 2:
            return source
        vectors = self.encoder.encode([question, *sentences])
        scores = vectors[1:] @ vectors[0]
        return sentences[int(scores.argmax())]
