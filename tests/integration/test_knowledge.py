"""The cloud knowledge base on the real MiniLM encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgecloud.cloud._knowledge import KnowledgeBase
from edgecloud.common.encoder import SentenceEncoder
from edgecloud.errors import ConfigError

pytestmark = pytest.mark.model

MANUAL = Path(__file__).parents[2] / "bench" / "data" / "fleet_manual"


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def test_index_is_persisted_and_rebuilt_only_on_change(
    encoder: SentenceEncoder, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(MANUAL, docs)
    kb = KnowledgeBase(docs, encoder)
    assert kb.rebuilt and len(kb) > 10
    assert not KnowledgeBase(docs, encoder).rebuilt
    (docs / "heron.md").write_text((docs / "heron.md").read_text().replace("Heron", "Egret"))
    changed = KnowledgeBase(docs, encoder)
    assert changed.rebuilt
    assert "Egret" in changed.search("What is the payload of the Egret robot?", k=1)[0].text
    (docs / "notes.txt").write_text("The staging warehouse is in Tampere.")
    added = KnowledgeBase(docs, encoder)
    assert added.rebuilt
    top = added.search("Where is the staging warehouse?", k=1)[0]
    assert top.source == "notes.txt" and "Tampere" in top.text


def test_search_finds_the_fact_for_each_robot(encoder: SentenceEncoder, tmp_path: Path) -> None:
    kb = KnowledgeBase(MANUAL, encoder, index_dir=tmp_path / "idx")
    for page in sorted(MANUAL.glob("*.md")):
        if page.stem == "error_codes":
            continue
        name = page.stem.capitalize()
        top = kb.search(f"How much weight can the {name} carry?", k=1)[0]
        assert name in top.text and "payload" in top.text


def test_identifiers_are_matched_exactly(encoder: SentenceEncoder, tmp_path: Path) -> None:
    kb = KnowledgeBase(MANUAL, encoder, index_dir=tmp_path / "idx")
    codes = [
        line.split()[2]
        for line in (MANUAL / "error_codes.md").read_text().splitlines()
        if line.startswith("Error code")
    ]
    for code in codes:
        assert code in kb.search(f"What does {code} mean?", k=1)[0].text


def test_bad_directories(encoder: SentenceEncoder, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        KnowledgeBase(tmp_path / "missing", encoder)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ConfigError, match=r"no \.txt or \.md"):
        KnowledgeBase(tmp_path / "empty", encoder)


def test_corrupt_index_is_rebuilt(encoder: SentenceEncoder, tmp_path: Path) -> None:
    kb = KnowledgeBase(MANUAL, encoder, index_dir=tmp_path / "idx")
    assert kb.rebuilt
    (tmp_path / "idx" / "vectors.npy").write_bytes(b"garbage")
    again = KnowledgeBase(MANUAL, encoder, index_dir=tmp_path / "idx")
    assert again.rebuilt and len(again) == len(kb)
