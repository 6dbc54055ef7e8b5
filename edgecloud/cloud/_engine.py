"""The torch side of continuous batching: one padded batch with a KV cache per row.

The batch keeps one ``DynamicCache`` whose rows are sequences, left-padded to a
common length, with a 2-D attention mask that hides the padding and explicit
position ids that count only real tokens, so a row computes exactly what it
would alone. New sequences are prefilled together (left-padded), then their
cache rows are padded to the batch length and concatenated; finished rows are
dropped with ``index_select`` and padding columns no row needs any more are cut.
Every layer uses a full (not sliding) cache layer so rows can be merged; the
model's mask still applies Gemma's sliding window.

Per-row LoRA: with adapters loaded the model is a peft ``PeftModel`` and every
forward passes ``adapter_names`` (one per row, ``"__base__"`` for none), peft's
mixed-adapter batch inference, so requests for different adapters share a step.

Confidence signals come from one ``log_softmax`` over the batch's logits at
temperature 1: logprob of the chosen token and entropy ``-sum(p log p)``.

Prefix verification (a hand-off with ``verify_prefix``): the device's answer so far
is the end of the prompt, and the same prefill that the continuation needs also
keeps the logits at the prefix positions (the last ``n + 1`` only). Token ``j`` of
the prefix stands when it is the model's greedy choice there, or, when sampling
with the device's logprob for every prefix token, with probability
``min(1, p/q)`` (``p``: the model's sampling distribution, after temperature,
top-k and top-p; ``q``: the device's probability; the request's seeded
generator draws). The first token that does not stand ends the kept prefix: the
sequence's KV cache is cut back to prompt + kept tokens (in the layout the
prefill builds anyway, packed or padded; no second forward) and the first new
token comes from the logits at that position. After a rejection it is drawn from
the model's distribution with the rejected token removed and renormalised (the
argmax, when greedy). What that preserves: greedy output is exactly the model's
own greedy continuation of the kept text, so a speculative round (draft k tokens,
``max_tokens=1``) adds the accepted draft and one token and the rounds produce the
model's greedy answer. Sampled, a drafted token stands with probability
``min(p, q)`` and a token the model would never draw (outside top-k/top-p) never
does; the whole output is distributed exactly as the model's own sampling when the
device's distribution equals the model's, and otherwise only approximately:
speculative sampling's exact residual ``max(0, p - q)`` needs the device's whole
distribution, and the wire carries only the logprob of each drafted token (which
the device computes at temperature 1, while ``q`` should be the distribution it
sampled from).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgecloud.cloud._grammar import mask_rows
from edgecloud.cloud._hf import cache_keyword, returned_cache
from edgecloud.cloud._sequence import Sequence_, TokenStep

if TYPE_CHECKING:
    import torch

    from edgecloud.types import SamplingParams

__all__ = ["TorchEngine"]

BASE_ADAPTER = "__base__"


class TorchEngine:
    """Implements :class:`~edgecloud.cloud._scheduler.BatchEngine` on a causal LM.

    Not thread-safe: the scheduler thread is its only caller.
    """

    def __init__(
        self, model: Any, *, pad_id: int, device: torch.device, use_adapters: bool
    ) -> None:
        import torch

        self._torch = torch
        self._model = model
        self._pad = pad_id
        self._device = device
        self._use_adapters = use_adapters
        self._cache_kw = cache_keyword(model)
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._mask: torch.Tensor | None = None  # [rows, length], 1 = real token
        self._positions: torch.Tensor | None = None  # [rows], position of the next token
        self._last: torch.Tensor | None = None  # [rows], the token to feed next
        self._rows: list[Sequence_] = []
        self._generators: dict[int, torch.Generator] = {}

    @property
    def model(self) -> Any:
        """The model this engine runs (a peft ``PeftModel`` when adapters are loaded)."""
        return self._model

    def use_adapters(self, model: Any) -> None:
        """Run ``model`` (a peft ``PeftModel`` over the same weights) with per-row adapters.

        For adapters loaded after start (a Ray Serve replica loads them on demand); rows
        already in the batch keep their KV cache, which the base weights produced.
        """
        self._model = model
        self._use_adapters = True

    @property
    def rows(self) -> int:
        return len(self._rows)

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        rows: Sequence[Sequence_],
        keep: int = 1,
    ) -> tuple[torch.Tensor, Any]:
        """Logits ``[rows, keep, vocab]`` at the last ``keep`` positions, and the cache."""
        kwargs: dict[str, Any] = {}
        if self._use_adapters:
            kwargs["adapter_names"] = [s.adapter_id or BASE_ADAPTER for s in rows]
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            # An index, not ``1``: the slice ``1`` takes is a non-contiguous view in a
            # prefill, and torch's CPU bfloat16 ``linear`` on a non-contiguous 3-D
            # input took 17 s here for the 262k-row output layer (55 ms contiguous).
            logits_to_keep=self._torch.arange(ids.shape[1] - keep, ids.shape[1], device=ids.device),
            **{self._cache_kw: cache},
            **kwargs,
        )
        return out.logits, returned_cache(out)

    def _can_pack(self, seqs: Sequence[Sequence_]) -> bool:
        """Whether ``seqs`` can be prefilled as one packed row (see :meth:`_prefill_packed`)."""
        if len(seqs) < 2:
            return False
        if self._use_adapters and len({s.adapter_id for s in seqs}) > 1:
            return False  # peft routes adapters by batch row; one row holds one adapter
        config = getattr(self._model, "config", None)
        if getattr(config, "use_bidirectional_attention", False):
            return False
        # One mask serves every layer, so a sliding-window layer must see the same
        # thing as a full one: no prompt may be longer than the window.
        window = getattr(config, "sliding_window", None)
        return window is None or max(len(s.prompt_ids) for s in seqs) <= window

    def prefill(self, seqs: Sequence[Sequence_]) -> list[TokenStep]:
        if self._can_pack(seqs):
            return self._prefill_packed(seqs)
        return self._prefill_padded(seqs)

    def _prefill_packed(self, seqs: Sequence[Sequence_]) -> list[TokenStep]:
        """Prefill the prompts end to end in one row, each attending only to itself.

        A padded batch computes every row at the longest prompt's width; on the
        benchmark's 16 short prompts that is 176 token positions for 102 real
        tokens. Packed, the linear layers see only the real tokens, under a
        block-diagonal causal mask (4-D, additive, used as is by transformers'
        eager and SDPA attention) with positions restarting at 0 per prompt.
        The cache comes back as one row and is laid out left-padded per
        sequence, exactly as a padded prefill leaves it (without the rejected
        part of a verified prefix).
        """
        from transformers import DynamicCache

        torch = self._torch
        lengths = [len(s.prompt_ids) for s in seqs]
        total = sum(lengths)
        ends = torch.tensor(lengths).cumsum(0)
        starts = ends - torch.tensor(lengths)
        ids = torch.tensor([t for s in seqs for t in s.prompt_ids], dtype=torch.long)[None]
        owner = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(lengths))
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        col = torch.arange(total)
        allowed = (owner[:, None] == owner[None, :]) & (col[None, :] <= col[:, None])
        dtype = next(self._model.parameters()).dtype
        bias = torch.zeros((total, total), dtype=dtype).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )[None, None]
        # Each prompt's last position, and before it those predicting its prefix tokens.
        keep = torch.cat(
            [
                torch.arange(int(e) - 1 - s.verify_tokens, int(e))
                for e, s in zip(ends, seqs, strict=True)
            ]
        )
        dev = self._device
        ids, positions, bias = ids.to(dev), positions.to(dev), bias.to(dev)
        kwargs: dict[str, Any] = {}
        if self._use_adapters:
            kwargs["adapter_names"] = [seqs[0].adapter_id or BASE_ADAPTER]
        with torch.inference_mode():
            out = self._model(
                input_ids=ids,
                attention_mask=bias,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=keep.to(dev),
                **{self._cache_kw: DynamicCache()},
                **kwargs,
            )
            rows = out.logits[0].split([s.verify_tokens + 1 for s in seqs])
            steps, chosen, kept = self._first_tokens(rows, seqs)
            index, pad = self._layout(kept)
            source, pad = (starts[:, None] + index).to(dev), pad.to(dev)
            blank = pad[:, None, :, None]
            keys, values = [], []
            for layer in returned_cache(out).layers:
                # [1, heads, total, dim] -> [rows, heads, width, dim]
                keys.append(layer.keys[0][:, source].transpose(0, 1).masked_fill(blank, 0.0))
                values.append(layer.values[0][:, source].transpose(0, 1).masked_fill(blank, 0.0))
            mask = (~pad).long()
            self._merge(keys, values, mask, torch.tensor(kept, device=dev), chosen, seqs)
        return steps

    def _prefill_padded(self, seqs: Sequence[Sequence_]) -> list[TokenStep]:
        from transformers import DynamicCache

        torch = self._torch
        lengths = [len(s.prompt_ids) for s in seqs]
        width = max(lengths)
        ids = torch.full((len(seqs), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            n = len(s.prompt_ids)
            ids[i, width - n :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # The rows share their right edge, so one index serves all: the positions
        # predicting the longest verified prefix's tokens, and the last one.
        keep = max(s.verify_tokens for s in seqs) + 1
        with torch.inference_mode():
            logits, cache = self._forward(ids, mask, positions, DynamicCache(), seqs, keep)
            rows = [logits[i, keep - s.verify_tokens - 1 :] for i, s in enumerate(seqs)]
            steps, chosen, kept = self._first_tokens(rows, seqs)
            if kept == lengths:
                # Zero the cache at padding: those positions are masked, but a NaN
                # computed there would still poison the weighted sum (0 * NaN).
                pad = (mask == 0)[:, None, :, None]
                keys = [layer.keys.masked_fill(pad, 0.0) for layer in cache.layers]
                values = [layer.values.masked_fill(pad, 0.0) for layer in cache.layers]
            else:
                # A rejected prefix tail is cut off: each row's kept tokens move right,
                # to end at the new right edge, and padding fills in before them.
                index, new_pad = self._layout(kept)
                source = (width - torch.tensor(lengths))[:, None] + index
                row = torch.arange(len(seqs))[:, None]
                row, source = row.to(self._device), source.to(self._device)
                blank = new_pad.to(self._device)[:, None, :, None]
                # [rows, heads, width, dim] -> [rows, new width, heads, dim], then heads second
                keys = [
                    layer.keys[row, :, source].transpose(1, 2).masked_fill(blank, 0.0)
                    for layer in cache.layers
                ]
                values = [
                    layer.values[row, :, source].transpose(1, 2).masked_fill(blank, 0.0)
                    for layer in cache.layers
                ]
                mask = (~new_pad).long().to(self._device)
            self._merge(keys, values, mask, torch.tensor(kept, device=self._device), chosen, seqs)
        return steps

    def _layout(self, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A left-padded layout of rows holding ``lengths`` tokens: for each row and
        column, the index of the token there among the row's own (0 at padding), and
        whether the column is padding. Both ``[rows, max(lengths)]``, on the CPU."""
        torch = self._torch
        width = max(lengths)
        start = (width - torch.tensor(lengths))[:, None]
        col = torch.arange(width)[None, :]
        return (col - start).clamp(min=0), col < start

    def _first_tokens(
        self, rows: Sequence[torch.Tensor], seqs: Sequence[Sequence_]
    ) -> tuple[list[TokenStep], torch.Tensor, list[int]]:
        """Each sequence's first new token and how many of its prompt tokens stay cached.

        ``rows[i]`` holds sequence i's logits at the positions predicting each of its
        verified prefix tokens, then at its last position (one row when it verifies
        nothing); the new token comes from the position after the kept prefix.
        """
        picks: list[torch.Tensor] = []
        banned: list[int | None] = []
        kept: list[int] = []
        for logits, seq in zip(rows, seqs, strict=True):
            accepted, rejected = self._verify(logits, seq)
            picks.append(logits[accepted])
            banned.append(rejected)
            kept.append(len(seq.prompt_ids) - seq.verify_tokens + accepted)
        steps, chosen = self._pick(self._torch.stack(picks), seqs, banned)
        return steps, chosen, kept

    def _verify(self, logits: torch.Tensor, seq: Sequence_) -> tuple[int, int | None]:
        """Prefix tokens kept, and the rejected token the next one must not repeat."""
        n = seq.verify_tokens
        if n == 0:
            return 0, None
        torch = self._torch
        drafted = torch.tensor(seq.prefix_ids, device=logits.device)
        scores = logits[:n].float()
        allowed = n
        if seq.grammar is not None:  # judge each token against the constrained choice
            scores, allowed = seq.grammar.walk(scores, seq.prefix_ids)
        if seq.params.temperature > 0 and len(seq.prefix_logprobs) == n:
            # Speculative sampling's test, in logs: keep the token when u < p / q.
            log_p = self._distribution(scores, seq.params).gather(1, drafted[:, None])[:, 0].log()
            log_q = torch.tensor(seq.prefix_logprobs, device=logits.device)
            u = torch.rand(n, generator=self._generator(seq, logits.device), device=logits.device)
            agree = u.log() < log_p - log_q
        else:
            agree = scores.argmax(-1) == drafted
        first = n if bool(agree.all()) else int(agree.logical_not().nonzero()[0])
        first = min(first, allowed)
        accepted = seq.accept_prefix(first)
        if seq.grammar is not None:
            seq.grammar.rollback(allowed - accepted)  # back to the state after the kept text
        return accepted, int(drafted[first]) if accepted == first < n else None

    def _merge(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        mask: torch.Tensor,
        positions: torch.Tensor,
        last: torch.Tensor,
        seqs: Sequence[Sequence_],
    ) -> None:
        torch = self._torch
        if self._mask is None:
            self._keys, self._values, self._mask = keys, values, mask
            self._positions, self._last = positions, last
            self._rows = list(seqs)
            return
        old, new = self._mask.shape[1], mask.shape[1]
        width = max(old, new)

        self._keys = [
            torch.cat([_pad_left(a, width - old, 2), _pad_left(b, width - new, 2)])
            for a, b in zip(self._keys, keys, strict=True)
        ]
        self._values = [
            torch.cat([_pad_left(a, width - old, 2), _pad_left(b, width - new, 2)])
            for a, b in zip(self._values, values, strict=True)
        ]
        self._mask = torch.cat(
            [_pad_left(self._mask, width - old, 1), _pad_left(mask, width - new, 1)]
        )
        assert self._positions is not None and self._last is not None
        self._positions = torch.cat([self._positions, positions])
        self._last = torch.cat([self._last, last])
        self._rows.extend(seqs)

    def decode(self) -> list[TokenStep]:
        from transformers import DynamicCache

        torch = self._torch
        assert self._mask is not None and self._positions is not None and self._last is not None
        ones = self._mask.new_ones((self._mask.shape[0], 1))
        mask = torch.cat([self._mask, ones], dim=1)
        cache = DynamicCache(ddp_cache_data=list(zip(self._keys, self._values, strict=True)))
        with torch.inference_mode():
            logits, cache = self._forward(
                self._last[:, None], mask, self._positions[:, None], cache, self._rows
            )
            steps, chosen = self._pick(logits[:, -1], self._rows)
        self._keys = [layer.keys for layer in cache.layers]
        self._values = [layer.values for layer in cache.layers]
        self._mask = mask
        self._positions = self._positions + 1
        self._last = chosen
        return steps

    def remove(self, indices: Sequence[int]) -> None:
        torch = self._torch
        gone = set(indices)
        for i in gone:
            self._generators.pop(id(self._rows[i]), None)
        keep_rows = [i for i in range(len(self._rows)) if i not in gone]
        self._rows = [self._rows[i] for i in keep_rows]
        if not keep_rows:
            self._keys, self._values = [], []
            self._mask = self._positions = self._last = None
            return
        assert self._mask is not None and self._positions is not None and self._last is not None
        keep = torch.tensor(keep_rows, dtype=torch.long, device=self._device)
        mask = self._mask.index_select(0, keep)
        # Columns that are padding in every remaining row are dead weight in every step.
        start = int((mask.sum(0) > 0).nonzero()[0])
        self._mask = mask[:, start:]
        self._keys = [k.index_select(0, keep)[:, :, start:] for k in self._keys]
        self._values = [v.index_select(0, keep)[:, :, start:] for v in self._values]
        self._positions = self._positions.index_select(0, keep)
        self._last = self._last.index_select(0, keep)

    def reset(self) -> None:
        self._rows = []
        self._generators.clear()
        self._keys, self._values = [], []
        self._mask = self._positions = self._last = None

    def _pick(
        self,
        logits: torch.Tensor,
        rows: Sequence[Sequence_],
        banned: Sequence[int | None] = (),
    ) -> tuple[list[TokenStep], torch.Tensor]:
        """One token per row; ``banned[i]``, when set, is a token row i must not draw
        (a rejected prefix token; a greedy row's argmax never is one).

        A row with a grammar picks among the tokens it allows; its logprob and entropy
        stay those of the model's full distribution (as on the device)."""
        torch = self._torch
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        # -sum(p log p); clamping keeps 0 * -inf (a masked token) from becoming NaN.
        # Cheaper than torch.special.entr, which computes its own log.
        finite = logprobs.clamp_min(torch.finfo(logprobs.dtype).min)
        entropy = -(logprobs.exp() * finite).sum(-1)
        # After the signals: the mask goes into the logits themselves (this step's own;
        # nothing reads them afterwards), sparing a copy of the batch's logits.
        mask_rows(logits, [s.grammar for s in rows])
        chosen = logits.argmax(-1)
        for i, seq in enumerate(rows):
            if seq.params.temperature > 0:
                chosen[i] = self._sample(logits[i], seq, banned[i] if banned else None)
            if seq.grammar is not None and not seq.grammar.accept(int(chosen[i])):
                # Nothing allowed is left (every logit masked): end the answer.
                chosen[i] = min(seq.eos_ids) if seq.eos_ids else chosen[i]
        picked = logprobs.gather(1, chosen[:, None])[:, 0]
        steps = [
            TokenStep(int(t), float(lp), max(float(h), 0.0))
            for t, lp, h in zip(chosen.tolist(), picked.tolist(), entropy.tolist(), strict=True)
        ]
        return steps, chosen

    def _generator(self, seq: Sequence_, device: torch.device) -> torch.Generator:
        """The sequence's random generator (seeded from ``params.seed`` when set)."""
        gen = self._generators.get(id(seq))
        if gen is None:
            gen = self._torch.Generator(device=device)
            if seq.params.seed is not None:
                gen.manual_seed(seq.params.seed)
            else:
                gen.seed()
            self._generators[id(seq)] = gen
        return gen

    def _distribution(self, logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
        """The distribution each row of ``logits`` samples from: temperature, top-k, top-p."""
        torch = self._torch
        scores = logits / p.temperature
        if 0 < p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            mass = sorted_scores.softmax(-1)
            # Keep the smallest prefix whose mass reaches top_p (always the best token).
            drop = mass.cumsum(-1) - mass >= p.top_p
            scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
        return scores.softmax(-1)

    def _sample(self, row: torch.Tensor, seq: Sequence_, banned: int | None = None) -> int:
        probs = self._distribution(row, seq.params)
        if banned is not None:
            # Mass remains: a greedy-agreement rejection keeps the argmax, and the
            # ratio test never rejects a token that holds all of it (p/q >= 1).
            probs[banned] = 0.0
        return int(self._torch.multinomial(probs, 1, generator=self._generator(seq, row.device)))


def _pad_left(t: torch.Tensor, extra: int, dim: int) -> torch.Tensor:
    """``t`` with ``extra`` zero columns prepended along ``dim``."""
    if extra == 0:
        return t
    import torch

    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)
