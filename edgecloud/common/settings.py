"""What every settings section shares: one frozen base model and the error format.

Each subsystem keeps its settings beside its code (``device/_settings.py``,
``cloud/_settings.py``, ``router/_settings.py``, ``split/_settings.py``); the root
:class:`edgecloud.config.Settings` composes them and reads TOML and the
environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["Section", "default_cache_dir", "default_threads", "format_validation_error"]


class Section(BaseModel):
    """Base of every settings section: frozen, and unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgecloud``, or ``~/.cache/edgecloud``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecloud"


def default_threads() -> int:
    """CPU threads for decoding by default: the CPUs here, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``dotted.field: message (got value)``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        parts.append(f"{loc}: {err['msg']} (got {shown})")
    return "; ".join(parts)
