"""The cloud's knowledge base: retrieval over the organization's own documents.

``edgecloud cloud serve --knowledge DIR`` indexes the text and markdown files
under DIR: each file is split into chunks (paragraphs, long ones by sentence, each
prefixed with its nearest markdown heading), embedded with the same small ONNX
encoder the devices use, and kept in ``<index_dir>/`` as a float32 ``.npy``
matrix plus a JSON list of chunks and a manifest of file hashes. On start the
manifest is compared with the files; the index is rebuilt only when a file was
added, removed or changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecloud.cloud._settings import CHUNK_CHARS
from edgecloud.errors import ConfigError
from edgecloud.types import Passage

if TYPE_CHECKING:
    import numpy.typing as npt

    from edgecloud.common.encoder import SentenceEncoder

__all__ = ["KnowledgeBase", "Passage", "chunk_text"]

log = logging.getLogger("edgecloud.cloud.knowledge")

_SUFFIXES = (".txt", ".md", ".markdown")
_INDEX_VERSION = 1


def chunk_text(text: str, max_chars: int = 160) -> list[str]:
    """Chunks of at most ``max_chars`` (a paragraph, or a few of its sentences), each
    prefixed with its markdown heading path ("Title / Section: ...") for context."""
    chunks: list[str] = []
    headings: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        while block.startswith("#"):
            first, _, block = block.partition("\n")
            level = len(first) - len(first.lstrip("#"))
            headings = [*headings[: level - 1], first.lstrip("#").strip()]
            block = block.strip()
        if not block:
            continue
        prefix = f"{' / '.join(headings)}: " if headings else ""
        piece = ""
        for sentence in re.split(r"(?<=[.!?])\s+|\n", block):
            sentence = sentence.strip()
            if not sentence:
                continue
            if piece and len(piece) + 1 + len(sentence) > max_chars:
                chunks.append(prefix + piece)
                piece = ""
            piece = f"{piece} {sentence}".strip()
        if piece:
            chunks.append(prefix + piece)
    return chunks


# Identifiers such as error codes or part numbers (letters and digits mixed): sentence
# embeddings barely tell "E-214" from "E-748", so an exact match adds to the score.
_IDENT = re.compile(r"\b(?=[\w-]*\d)[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+\b|\b[A-Za-z]+\d+[A-Za-z0-9]*\b")
_IDENT_BOOST = 0.3


class KnowledgeBase:
    """Retrieves the passages most similar to a query.

    Args:
        directory: the documents (``*.txt``, ``*.md``), searched recursively.
        encoder: a :class:`~edgecloud.common.encoder.SentenceEncoder`.
        index_dir: where the index is kept; default ``<directory>/.edgecloud-index``.
        max_chars: chunk size.
        progress: called with (chunks embedded, total) while (re)building.

    Raises:
        ConfigError: ``directory`` does not exist or holds no documents.
    """

    def __init__(
        self,
        directory: str | Path,
        encoder: SentenceEncoder,
        *,
        index_dir: str | Path | None = None,
        max_chars: int = CHUNK_CHARS,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigError(f"knowledge directory not found: {self.directory}")
        self.index_dir = Path(index_dir) if index_dir else self.directory / ".edgecloud-index"
        self._encoder = encoder
        self._max_chars = max_chars
        files = sorted(
            p for p in self.directory.rglob("*")
            if p.suffix.lower() in _SUFFIXES and p.is_file() and self.index_dir not in p.parents
        )  # fmt: skip
        if not files:
            raise ConfigError(f"no .txt or .md files under {self.directory}")
        manifest = {
            "version": _INDEX_VERSION,
            "max_chars": max_chars,
            "files": {
                str(p.relative_to(self.directory)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in files
            },
        }
        self.rebuilt = not self._load(manifest)
        if self.rebuilt:
            self._build(files, manifest, progress)

    def _load(self, manifest: dict[str, object]) -> bool:
        try:
            stored = json.loads((self.index_dir / "manifest.json").read_text())
            if stored != manifest:
                return False
            self._chunks: list[tuple[str, str]] = [
                (c["text"], c["source"])
                for c in json.loads((self.index_dir / "chunks.json").read_text())
            ]
            self._vectors: npt.NDArray[np.float32] = np.load(
                self.index_dir / "vectors.npy", allow_pickle=False
            )
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return len(self._chunks) == len(self._vectors)

    def _build(
        self,
        files: Sequence[Path],
        manifest: dict[str, object],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        chunks = [
            (text, str(p.relative_to(self.directory)))
            for p in files
            for text in chunk_text(p.read_text(encoding="utf-8", errors="replace"), self._max_chars)
        ]
        vectors = []
        for i in range(0, len(chunks), 32):
            vectors.append(self._encoder.encode([c[0] for c in chunks[i : i + 32]]))
            if progress is not None:
                progress(min(i + 32, len(chunks)), len(chunks))
        self._chunks = chunks
        self._vectors = (
            np.concatenate(vectors) if vectors else np.zeros((0, self._encoder.dim), np.float32)
        )
        self.index_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.index_dir / "vectors.npy", self._vectors, allow_pickle=False)
        (self.index_dir / "chunks.json").write_text(
            json.dumps([{"text": t, "source": s} for t, s in chunks])
        )
        # The manifest is written last: an interrupted build is rebuilt on the next start.
        (self.index_dir / "manifest.json").write_text(json.dumps(manifest))
        log.info("indexed %d chunks from %d files in %s", len(chunks), len(files), self.directory)

    @property
    def encoder(self) -> SentenceEncoder:
        """The sentence encoder the index was built with (and queries are embedded with)."""
        return self._encoder

    def __len__(self) -> int:
        return len(self._chunks)

    def search(self, query: str, k: int = 3, min_score: float = 0.0) -> list[Passage]:
        """The ``k`` passages most similar to ``query`` (cosine), best first."""
        if not query.strip() or not self._chunks:
            return []
        q = self._encoder.encode([query])[0]
        scores = self._vectors @ q
        for ident in {m.group().lower() for m in _IDENT.finditer(query)}:
            hits = np.fromiter(
                (ident in text.lower() for text, _ in self._chunks), bool, len(self._chunks)
            )
            scores = scores + _IDENT_BOOST * hits
        top = np.argsort(-scores)[:k]
        return [
            Passage(self._chunks[i][0], self._chunks[i][1], float(scores[i]))
            for i in top
            if scores[i] >= min_score
        ]
