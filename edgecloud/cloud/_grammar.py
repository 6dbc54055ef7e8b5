"""JSON-schema grammars in the batch: xgrammar matchers and per-row token bitmasks.

Each constrained sequence owns a matcher (its place in the schema's grammar). Before
a step picks tokens, every constrained row fills its row of one bitmask
(``vocab / 32`` int32 words) and one in-place kernel sets the forbidden logits of
those rows to -inf; free rows are left out of the kernel's row indices, so
constrained and free requests share the batch and its forward pass. The confidence
signals are computed before the mask, from the model's full distribution, as on the
device (docs/structured-output.md says why).

A hand-off's assistant prefix was written by the device under the same schema: the
matcher walks it token by token (in this model's tokenization), masking the verified
positions as it goes, so verification compares the device's tokens with the cloud's
*constrained* choice, and the answer resumes in the grammar state after the kept
prefix (tokens beyond it are rolled back).

xgrammar compiles a schema once (its compiler caches by schema text); building the
tokenizer's table takes seconds on a 262k vocabulary, so it happens on the first
constrained request, in a worker thread, not at start.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgecloud.errors import InvalidRequestError

if TYPE_CHECKING:
    import torch

__all__ = ["GrammarCompiler", "SequenceGrammar", "mask_rows"]


class GrammarCompiler:
    """Compiles JSON schemas for one tokenizer (thread-safe; built on first use)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab = vocab_size
        self._stop_ids = sorted(stop_ids)
        self._compiler: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._compiler is None:
                try:
                    import xgrammar as xgr
                except ImportError as exc:
                    raise InvalidRequestError(
                        "this cloud cannot constrain answers to a JSON schema: "
                        "pip install 'edgecloud[cloud]' (xgrammar)"
                    ) from exc
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab, stop_token_ids=self._stop_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            return self._compiler

    def compile(self, schema: str) -> Any:
        """The compiled grammar of ``schema`` (JSON text).

        Raises:
            InvalidRequestError: xgrammar cannot compile the schema.
        """
        compiler = self._get()
        try:
            # any_whitespace: the device's grammar spaces JSON its own way (up to a
            # newline and 20 indent characters), and a hand-off's prefix must parse here
            # too; the bound keeps a model from padding whitespace until max_tokens.
            # strict_mode (the default), like the device: an object has only the
            # properties its schema lists.
            return compiler.compile_json_schema(schema, any_whitespace=True, max_whitespace_cnt=24)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidRequestError(
                f"the cloud's grammar compiler cannot handle this schema: {exc}"
            ) from exc

    def matcher(self, compiled: Any) -> SequenceGrammar:
        import xgrammar as xgr

        return SequenceGrammar(xgr.GrammarMatcher(compiled), self._vocab)


class SequenceGrammar:
    """One sequence's place in its grammar (used by the scheduler thread only)."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab = vocab_size

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]``."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        """Advance over ``token``; False (and no change) when the grammar forbids it."""
        return bool(self._matcher.accept_token(token))

    def advance(self, tokens: Sequence[int]) -> int:
        """Advance over as many of ``tokens`` as the grammar allows; returns how many."""
        for n, token in enumerate(tokens):
            if not self.accept(token):
                return n
        return len(tokens)

    def rollback(self, count: int) -> None:
        if count > 0:
            self._matcher.rollback(count)

    def walk(self, scores: torch.Tensor, tokens: Sequence[int]) -> tuple[torch.Tensor, int]:
        """Mask each row ``j`` of ``scores`` (the logits predicting ``tokens[j]``) by the
        grammar state after ``tokens[:j]``, advancing while the tokens are allowed.

        Returns the masked scores (rows after the first forbidden token are left as
        they are) and how many tokens were accepted.
        """
        import xgrammar as xgr

        masked = scores.clone()
        bitmask = xgr.allocate_token_bitmask(1, self._vocab)
        for j, token in enumerate(tokens):
            self._matcher.fill_next_token_bitmask(bitmask, 0)
            row = masked[j : j + 1]  # a view: the kernel masks it in place
            xgr.apply_token_bitmask_inplace(row, bitmask.to(row.device), vocab_size=self._vocab)
            if not self.accept(token):
                return masked, j
        return masked, len(tokens)


def mask_rows(logits: torch.Tensor, grammars: Sequence[SequenceGrammar | None]) -> bool:
    """Set each constrained row's forbidden tokens in ``logits`` (float, ``[rows, vocab]``)
    to -inf, in place (a copy of a 262k-wide batch costs as much as the mask itself);
    False, and nothing touched, when no row is constrained."""
    rows = [i for i, g in enumerate(grammars) if g is not None]
    if not rows:
        return False
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(grammars), logits.shape[-1])
    for i in rows:
        grammar = grammars[i]
        assert grammar is not None
        grammar.fill(bitmask, i)
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
    return True
