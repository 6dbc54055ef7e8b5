"""Stored escalation records as distillation examples, and the sets a round makes of them.

A record holds what a device asked (``prompt``), what it had produced before
the hand-off (``local_partial``) and what the cloud answered after it
(``cloud_answer``), plus the knowledge passages the cloud retrieved and the
request's stop sequences. An example is the prompt and the answer the device
should give to it alone, ending where the request ended. Replay records
(confident local answers, ``device.log.replay_rate``) are mixed in as examples
of what the device should keep answering the same way. Shadow records (a confident
local answer the cloud was asked too, ``device.shadow``) are labelled by the cloud:
where it disagreed, its answer is learned as an escalation's would be; where it
agreed, the device's answer is replayed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgecloud.cloud._records import StoredRecord

__all__ = [
    "TrainingExample",
    "common_prompt_prefix",
    "content_words",
    "examples_from_records",
    "grounded",
    "split_holdout",
    "strip_prefix",
    "unique_passages",
]


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """One distillation target: the device's prompt and the answer it should give."""

    prompt: str
    answer: str
    terminator: str | None = None
    """Text appended after the answer (a stop sequence); None: the EOS token; '': nothing."""
    passages: tuple[str, ...] = ()
    record_id: str = ""
    replay: bool = False
    """A confident local answer the device already gives (keeps it from being forgotten)."""
    shadow: bool = False
    """From a shadow check (``device.shadow``): the cloud answered the same prompt after
    the device had answered it confidently (``replay``: the two agreed)."""
    synthetic: bool = False
    """A question the cloud wrote from its knowledge base, not one a device asked (see
    :func:`edgecloud.cloud.train._synthesize.synthesize_examples`)."""


def examples_from_records(
    records: Iterable[StoredRecord],
    *,
    require_grounded: bool = True,
    relabel_all: bool = False,
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(examples to train on, examples to relabel) from stored escalation records.

    Records the cloud did not finish (cancelled) or with an empty answer are
    skipped; so are records of chat prompts, whose rendering depends on the
    device's template (their text is kept in ``extra["messages"]``). With
    ``require_grounded``, a record answered from knowledge passages is kept only
    when its answer is :func:`grounded` in them; the others are to relabel (see
    :func:`edgecloud.cloud.train.train_lora`). With ``relabel_all`` every escalated
    record is to relabel, to be labelled by a vote of samples instead of the cloud's
    one answer (with its passages, or without when it had none). Replay records
    (confident local answers, ``extra["kind"] == "replay"``, see
    ``device.log.replay_rate``) become examples of what the device should keep
    answering the same way. Shadow records (``extra["kind"] == "shadow"``, see
    ``device.shadow``) where the cloud disagreed become examples of the cloud's answer
    alone (it answered from scratch: the device's answer is no prefix of it), kept or
    relabelled as escalations are; where it agreed, replay examples of the device's
    answer.
    """
    keep: list[TrainingExample] = []
    relabel: list[TrainingExample] = []
    for stored in records:
        r = stored.record
        extra = dict(r.extra)
        finish = extra.get("finish", "stop")
        answer = r.local_partial + r.cloud_answer
        replay = extra.get("kind") == "replay"
        shadow = extra.get("kind") == "shadow"
        passages = tuple(
            str(p.get("text", "")) for p in extra.get("passages", []) if isinstance(p, dict)
        )
        if shadow and extra.get("agree") is True:
            # The device's answer, confirmed: trained as a replay record is (the round
            # checks replayed answers against the knowledge base itself). The device
            # checks only answers it finished itself; ``finish`` is the cloud's.
            answer, finish, replay, passages = r.local_partial, "stop", True, ()
        elif shadow:
            answer = r.cloud_answer
        if finish == "cancelled" or not answer.strip():
            continue
        if "messages" in extra:
            # The device rendered these with its chat template, which the record does
            # not say; training on another rendering would teach the wrong prompt.
            continue
        stop = [s for s in extra.get("stop", []) if isinstance(s, str) and s]
        terminator: str | None
        if finish == "length":
            terminator = ""
        elif stop:
            terminator = stop[0]
        else:
            terminator = None
        example = TrainingExample(
            prompt=r.prompt,
            answer=answer,
            terminator=terminator,
            passages=tuple(p for p in passages if p),
            record_id=r.id,
            replay=replay,
            shadow=shadow,
        )
        to_vote = relabel_all and not replay
        if to_vote or (require_grounded and passages and not grounded(answer, passages)):
            relabel.append(example)
        else:
            keep.append(example)
    return keep, relabel


_WORD = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:[-'][^\W\d_]+)*", re.UNICODE)
_NUMBER = re.compile(r"\d")


def grounded(answer: str, passages: Sequence[str], *, min_word_chars: int = 3) -> bool:
    """Whether every number and every word of ``min_word_chars`` or more letters in
    ``answer`` occurs in ``passages`` (case-insensitive; numbers whole, so "8" is not
    in "8.5").

    A small cloud model given the right passage still answers from its own priors
    now and then ("100 kg" where the manual says 22.0 kg); training a device on
    that would teach it the error. An answer whose content words and numbers all
    come from the evidence it was given is far more likely right.
    """
    evidence = {w.lower() for p in passages for w in _WORD.findall(p)}
    content = content_words(answer, min_word_chars=min_word_chars)
    return bool(content) and content <= evidence


def content_words(text: str, *, min_word_chars: int = 3) -> set[str]:
    """The numbers and the words of ``min_word_chars`` or more letters in ``text``,
    lowercased: what :func:`grounded` looks for in the evidence."""
    words = (w.lower() for w in _WORD.findall(text))
    return {w for w in words if _NUMBER.search(w) or len(w) >= min_word_chars}


def common_prompt_prefix(examples: Sequence[TrainingExample]) -> str:
    """The whole lines every prompt starts with (few-shot examples, a system prompt).

    Cut at a line end so no example loses part of its own line; empty when fewer
    than two examples or nothing is shared.
    """
    if len(examples) < 2:
        return ""
    prefix = os.path.commonprefix([ex.prompt for ex in examples])  # noqa: RUF071 - text, not paths
    cut = prefix.rfind("\n")
    return prefix[: cut + 1] if cut >= 0 else ""


def strip_prefix(examples: Sequence[TrainingExample], prefix: str) -> list[TrainingExample]:
    """``examples`` with the first ``len(prefix)`` characters of each prompt cut off."""
    return [dataclasses.replace(ex, prompt=ex.prompt[len(prefix) :]) for ex in examples]


def unique_passages(examples: Sequence[TrainingExample]) -> list[str]:
    """Every passage of ``examples`` once, in the order they first appear."""
    seen: set[str] = set()
    passages: list[str] = []
    for ex in examples:
        for p in ex.passages:
            if p not in seen:
                seen.add(p)
                passages.append(p)
    return passages


def split_holdout(
    examples: Sequence[TrainingExample], fraction: float, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, holdout): each example goes to the holdout when a seeded hash of its id says so.

    Hashing the id (not shuffling) keeps an example on the same side when
    records are added later; examples without an id hash their prompt.
    """
    if fraction <= 0:
        return list(examples), []
    train: list[TrainingExample] = []
    held: list[TrainingExample] = []
    for ex in examples:
        key = f"{seed}:{ex.record_id or ex.prompt}".encode()
        u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        (held if u < fraction else train).append(ex)
    if not train:  # a tiny set must still train on something
        train, held = held, []
    return train, held
