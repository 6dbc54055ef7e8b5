"""What differs between transformers releases, kept in one place.

transformers 5.24 renamed the KV-cache argument of ``forward`` from
``past_key_values`` to ``cache`` (and the output field with it); the old name
still works there but warns, and is to be removed in 5.40.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["cache_keyword", "returned_cache"]


def cache_keyword(model: Any) -> str:
    """The keyword ``model``'s forward takes its KV cache by (a peft model: its base's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache``, or ``out.past_key_values`` before 5.24)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
