"""The data an evaluation of the learning loop runs on, read and checked before any model loads.

A domain is a knowledge directory (the cloud's knowledge base) and a facts file: a
JSON list, or JSON lines, of ``{"phrasings": [...], "answers": [...]}``. The device
sends the first ``asked`` phrasings of each fact; the rest are held out, never sent,
and the evaluation asks them. Beside it, a general set (JSON lines of
``{"question", "answers"}``; rows with a ``"domain"`` other than ``"general"`` are
skipped, so ``bench/data/router_eval.jsonl`` can be given as it is) checks that the
rest of what the device knows did not change, and everyday traffic (one question a
line) is what the device serves meanwhile.

The evaluation must not ask what the device sends (its escalations and replayed
answers are what the round trains on): a held-out phrasing or general question that
is also a sent phrasing or everyday traffic is an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
DOMAINS = ("fleet", "greenhouse")
"""Domains shipped in ``bench/data``: ``<name>_manual/`` and ``<name>_facts.json``."""
GENERAL = DATA / "router_eval.jsonl"
TRAFFIC = DATA / "general_traffic.txt"

Item = tuple[str, list[str]]
"""A question and the answers that count as right."""


class InputError(ValueError):
    """An input file or directory of the evaluation is missing or malformed."""


@dataclass(frozen=True)
class Fact:
    phrasings: list[str]
    answers: list[str]


@dataclass(frozen=True)
class Domain:
    """What one evaluation runs on (see the module doc)."""

    name: str
    knowledge: Path
    facts: list[Fact]
    asked: int
    general: list[Item]
    traffic: list[str]
    sources: dict[str, str] = field(default_factory=dict)
    """The files it was read from, for the report."""

    @property
    def sent(self) -> list[str]:
        """What the device asks during collection: the first ``asked`` phrasings."""
        return [p for f in self.facts for p in f.phrasings[: self.asked]]

    @property
    def heldout(self) -> list[Item]:
        """What the evaluation asks: every phrasing after the first ``asked``."""
        return [(p, f.answers) for f in self.facts for p in f.phrasings[self.asked :]]


def _items(path: Path, what: str) -> list[tuple[str, Any]]:
    """(where, item) of a JSON list or of JSON lines (``where`` names the item for errors).

    A file whose first character is ``[`` is one JSON list; any other is JSON lines
    (blank lines skipped).
    """
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
        return [(f"{path}: item {i + 1}", row) for i, row in enumerate(rows)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}: line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {n}: not valid JSON ({exc.msg})") from exc
    return out


def _strings(where: str, row: Any, key: str) -> list[str]:
    """``row[key]``, a non-empty list of non-empty strings."""
    value = row.get(key) if isinstance(row, dict) else None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise InputError(f"{where}: {key!r} must be a non-empty list of non-empty strings")
    return value


def load_facts(path: Path, *, asked: int, limit: int = 0) -> list[Fact]:
    """The first ``limit`` facts of ``path`` (0: all); every fact is checked.

    Raises:
        InputError: the file is missing or malformed, or a fact has no phrasing left
            to hold out after the first ``asked``.
    """
    if asked < 1:
        raise InputError(f"--asked must be at least 1, not {asked}")
    facts = []
    for where, row in _items(path, "facts"):
        phrasings = _strings(where, row, "phrasings")
        if len(phrasings) < asked + 1:
            raise InputError(
                f"{where}: {len(phrasings)} phrasings; the device sends {asked} (--asked) "
                f"and at least one more must be held out for the evaluation"
            )
        facts.append(Fact(phrasings, _strings(where, row, "answers")))
    if not facts:
        raise InputError(f"{path}: no facts")
    return facts[:limit] if limit else facts


def load_general(path: Path, *, limit: int = 0) -> list[Item]:
    """The first ``limit`` general questions of ``path`` (0: all).

    Raises:
        InputError: the file is missing, malformed or has no general question.
    """
    items = []
    for where, row in _items(path, "general set"):
        if isinstance(row, dict) and row.get("domain", "general") != "general":
            continue
        question = row.get("question") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{where}: 'question' must be a non-empty string")
        items.append((question, _strings(where, row, "answers")))
    if not items:
        raise InputError(f"{path}: no general questions")
    return items[:limit] if limit else items


def load_traffic(path: Path, *, limit: int = 0) -> list[str]:
    """The first ``limit`` everyday questions of ``path``, one a line (0: all)."""
    if not path.is_file():
        raise InputError(f"traffic file not found: {path}")
    lines = [q.strip() for q in path.read_text(encoding="utf-8").splitlines() if q.strip()]
    if not lines:
        raise InputError(f"{path}: no questions")
    return lines[:limit] if limit else lines


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _no_overlap(held: list[str], seen: list[str], what: str) -> None:
    shared = {_norm(q) for q in held} & {_norm(q) for q in seen}
    if shared:
        example = next(iter(sorted(shared)))
        raise InputError(
            f"{len(shared)} evaluation question(s) are also {what} (e.g. {example!r}): "
            "the evaluation must ask only what the device never sent"
        )


def resolve(
    *,
    domain: str | None = None,
    knowledge: Path | None = None,
    facts: Path | None = None,
    general: Path | None = None,
    traffic: Path | None = None,
    asked: int = 3,
    facts_limit: int = 0,
    general_limit: int = 0,
    traffic_limit: int = 0,
    name: str | None = None,
) -> Domain:
    """Read and check a domain's inputs.

    ``domain`` (one of :data:`DOMAINS`) fills ``knowledge`` and ``facts`` from
    ``bench/data``; given ones take precedence. Without either, the fleet. ``name``
    (default: the domain, else the facts file's stem less ``_facts``) names the
    results and the adapter.

    Raises:
        InputError: an unknown domain, a missing directory or file, malformed data, or
            evaluation questions the device also sends.
    """
    if domain is not None and domain not in DOMAINS:
        raise InputError(f"unknown domain {domain!r}: one of {', '.join(DOMAINS)}")
    if domain is None and knowledge is None and facts is None:
        domain = "fleet"
    if domain is not None:
        knowledge = knowledge or DATA / f"{domain}_manual"
        facts = facts or DATA / f"{domain}_facts.json"
    if knowledge is None or facts is None:
        raise InputError("--knowledge and --facts go together (or --domain fills both)")
    if not knowledge.is_dir():
        raise InputError(f"knowledge directory not found: {knowledge}")
    general = general or GENERAL
    traffic = traffic or TRAFFIC
    name = name or domain or re.sub(r"_facts$", "", facts.stem)
    from edgecloud.adapters._manifest import ADAPTER_ID_PATTERN

    if not re.fullmatch(ADAPTER_ID_PATTERN, name):
        raise InputError(f"name {name!r}: letters, digits, '.', '_' and '-' (64 at most)")
    out = Domain(
        name=name,
        knowledge=knowledge,
        facts=load_facts(facts, asked=asked, limit=facts_limit),
        asked=asked,
        general=load_general(general, limit=general_limit),
        traffic=load_traffic(traffic, limit=traffic_limit),
        sources={
            "knowledge": str(knowledge),
            "facts": str(facts),
            "general": str(general),
            "traffic": str(traffic),
        },
    )
    sent = out.sent + out.traffic
    _no_overlap([q for q, _ in out.heldout + out.general], sent, "sent by the device")
    return out
