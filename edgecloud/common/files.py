"""File helpers shared by every package: hashing in blocks and durable renames."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ProgressCallback", "fsync_dir", "hash_file", "sha256_file"]

_BLOCK = 4 << 20

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as long work proceeds."""


def hash_file(path: Path, progress: ProgressCallback | None = None) -> tuple[Any, int]:
    """(sha256 object, bytes) of a file, read in blocks; the object can take more bytes."""
    total = path.stat().st_size if progress is not None else 0
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
            size += len(block)
            if progress is not None:
                progress(size, total)
    return digest, size


def sha256_file(path: Path, progress: ProgressCallback | None = None) -> str:
    """The hex sha256 of a file."""
    return str(hash_file(path, progress)[0].hexdigest())


def fsync_dir(path: Path) -> None:
    """Make a rename or creation in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
