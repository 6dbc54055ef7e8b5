"""JSON-schema grammars on llama.cpp: the schema's GBNF and a per-generation matcher.

Only this module and :mod:`edgecloud.backends.llama_cpp` know llama-cpp-python.

A schema becomes GBNF with llama-cpp-python's converter (a port of llama.cpp's
``json_schema_to_grammar``), and the GBNF a native grammar sampler. Applying that
sampler to the whole vocabulary is costly: 45 ms for Gemma 3's 262k tokens on the
reference 2-core machine, three times a decode step. So a step first asks whether
the model's own choice is allowed (one candidate: about 30 µs), which it usually is
when the prompt asks for the same JSON; only when it is not does the grammar look
further: at the 64 most likely tokens (the best allowed one among them *is* the
constrained argmax when there is one, since every other token scores lower), and at
the whole vocabulary last. llama.cpp's own sampler (``common_sampler_sample``) does
the same; for sampling it is also exact: drawing freely and redrawing from the masked
distribution on a rejection gives each allowed token probability ``p / Z``.

A token the grammar does not allow must never reach ``llama_sampler_accept``: the
C++ grammar throws, and an exception through the C API ends the process. Every
accepted token has passed :meth:`Grammar.allows` (or come out of a mask) first.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

from edgecloud.errors import InvalidRequestError

__all__ = ["Grammar", "schema_to_gbnf"]

TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
"""``struct llama_token_data`` as a numpy record."""

_SHORTLIST = 64
"""Most likely tokens the grammar looks at before the whole vocabulary."""


@functools.lru_cache(maxsize=64)
def schema_to_gbnf(schema: str) -> str:
    """GBNF for a JSON schema (JSON text), cached per schema (thread-safe).

    Raises:
        InvalidRequestError: the converter cannot handle the schema (a remote ``$ref``,
            an unsupported ``pattern`` construct, ...).
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        lowered = json.dumps(_small_int_ranges(json.loads(schema)))
        return _upstream_rules(json_schema_to_gbnf(lowered))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError) as exc:
        raise InvalidRequestError(
            f"the device's grammar compiler cannot handle this schema: {exc}"
        ) from exc


_MAX_RANGE = 512
"""Largest integer range written out as an enum (see :func:`_small_int_ranges`)."""


def _small_int_ranges(node: Any) -> Any:
    """``node`` with every bounded integer of at most :data:`_MAX_RANGE` values turned into
    the ``enum`` of those values. llama-cpp-python's converter ignores ``minimum`` and
    ``maximum`` (llama.cpp's C++ one writes digit rules for them), so a "bay from 1 to
    20" would otherwise be any integer, and a small model happily writes 100000000000;
    as an enum the grammar allows exactly the schema's values. Wider ranges stay as
    they are: the final validation checks them."""
    if isinstance(node, list):
        return [_small_int_ranges(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _small_int_ranges(v) for k, v in node.items()}
    if out.get("type") != "integer" or "enum" in out or "const" in out:
        return out
    low, high = (
        _bound(out, "minimum", "exclusiveMinimum", 1),
        _bound(out, "maximum", "exclusiveMaximum", -1),
    )
    if low is None or high is None or not 0 <= high - low < _MAX_RANGE:
        return out
    step = out.get("multipleOf", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
        return out
    values = [v for v in range(low, high + 1) if v % step == 0]
    rest = {k: v for k, v in out.items() if k not in _RANGE_KEYS}
    return {**rest, "enum": values}


_RANGE_KEYS = frozenset(
    {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
)


def _bound(node: dict[str, Any], inclusive: str, exclusive: str, shift: int) -> int | None:
    """The tightest integer bound of ``node`` on one side (None when it has none)."""
    found: list[int] = []
    value = node.get(inclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        found.append(math.ceil(value) if shift > 0 else math.floor(value))
    value = node.get(exclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        edge = math.floor(value) + 1 if shift > 0 else math.ceil(value) - 1
        found.append(edge)
    if not found:
        return None
    return max(found) if shift > 0 else min(found)


_FIXES = {
    # JSON strings hold no raw control characters (json.loads refuses a raw newline).
    r'char ::= [^"\\] |': r'char ::= [^"\\\x7F\x00-\x1F] |',
    # A newline and indentation between tokens, as the cloud's grammar (and llama.cpp's
    # C++ converter) allow: text the cloud wrote must parse when the device finishes it.
    r'space ::= " "?': r'space ::= | " " | "\n" [ \t]{0,20}',
}
"""Rules of llama-cpp-python's converter that differ from llama.cpp's own, as the C++
converter writes them."""


def _upstream_rules(gbnf: str) -> str:
    """The GBNF with :data:`_FIXES` applied (each rule is one line, matched by its start)."""
    lines = gbnf.split("\n")
    for i, line in enumerate(lines):
        for loose, strict in _FIXES.items():
            if line.startswith(loose):
                lines[i] = strict + line[len(loose) :]
    return "\n".join(lines)


class Grammar:
    """llama.cpp's grammar sampler for one generation (not thread-safe).

    Raises:
        InvalidRequestError: llama.cpp cannot parse the grammar.
    """

    def __init__(self, ll: Any, vocab: Any, gbnf: str) -> None:
        self._ll = ll
        handle = ll.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not handle:
            raise InvalidRequestError("llama.cpp cannot parse the grammar of this schema")
        self._handle = handle
        self._free = weakref.finalize(self, ll.llama_sampler_free, handle)
        self._few = np.zeros(_SHORTLIST, dtype=TOKEN_DATA)
        self._few_array = ll.llama_token_data_array(
            data=self._few.ctypes.data_as(ll.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        self.full_masks = 0
        """Steps that needed the whole vocabulary masked (for the bench)."""

    def close(self) -> None:
        self._free()

    def _apply(self, cur: Any) -> None:
        self._ll.llama_sampler_apply(self._handle, ctypes.byref(cur))

    def allows(self, token: int) -> bool:
        """Whether ``token`` may come next."""
        few = self._few
        few["id"][0], few["logit"][0] = token, 0.0
        self._few_array.size = 1
        self._apply(self._few_array)
        return bool(np.isfinite(few["logit"][0]))

    def accept(self, token: int) -> None:
        """Advance over ``token``; it must be allowed (see the module docstring)."""
        self._ll.llama_sampler_accept(self._handle, token)

    def best(self, logits: npt.NDArray[np.float32], first: int, full: FullMask) -> int | None:
        """The most likely allowed token (``first`` is ``logits.argmax()``); None when the
        grammar allows nothing (it cannot go on)."""
        if self.allows(first):
            return first
        ids = np.argpartition(logits, -_SHORTLIST)[-_SHORTLIST:]
        few = self._few
        few["id"], few["logit"] = ids, logits[ids]
        self._few_array.size = _SHORTLIST
        self._apply(self._few_array)
        scores = few["logit"]
        if np.isfinite(scores).any():
            return int(few["id"][int(scores.argmax())])
        masked = full.mask(self, logits)
        top = int(masked.argmax())
        return top if np.isfinite(masked[top]) else None

    def sample(
        self, logits: npt.NDArray[np.float32], drawn: int, chain: Any, full: FullMask
    ) -> int | None:
        """``drawn`` (a free draw of ``chain``) when allowed, else a draw of ``chain`` from
        the masked distribution; None when the grammar allows nothing."""
        if self.allows(drawn):
            return drawn
        masked = full.mask(self, logits)
        if not np.isfinite(masked).any():
            return None
        return full.draw(chain)


class FullMask:
    """The whole-vocabulary candidate array, reused by every generation of a backend."""

    def __init__(self, ll: Any, n_vocab: int) -> None:
        self._ll = ll
        self._data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.intc)
        self._array = ll.llama_token_data_array(
            data=self._data.ctypes.data_as(ll.llama_token_data_p),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )

    def mask(self, grammar: Grammar, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``logits`` with every token the grammar forbids at -inf (a view, in token order)."""
        data = self._data
        data["id"], data["logit"], data["p"] = self._ids, logits, 0.0
        self._array.size, self._array.selected, self._array.sorted = len(data), -1, False
        grammar._apply(self._array)
        grammar.full_masks += 1
        scores: npt.NDArray[np.float32] = data["logit"]
        return scores

    def draw(self, chain: Any) -> int:
        """A token drawn by the sampler ``chain`` from the masked candidates."""
        self._ll.llama_sampler_apply(chain, ctypes.byref(self._array))
        return int(self._data["id"][self._array.selected])
