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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgecloud.cloud._hf import cache_keyword, returned_cache
from edgecloud.cloud._sequence import Sequence_, TokenStep

if TYPE_CHECKING:
    import torch

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
    ) -> tuple[torch.Tensor, Any]:
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
            logits_to_keep=self._torch.tensor([ids.shape[1] - 1], device=ids.device),
            **{self._cache_kw: cache},
            **kwargs,
        )
        return out.logits[:, -1, :], returned_cache(out)

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
        sequence, exactly as a padded prefill leaves it.
        """
        from transformers import DynamicCache

        torch = self._torch
        lengths = [len(s.prompt_ids) for s in seqs]
        total, width = sum(lengths), max(lengths)
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
        # Row i of the padded layout: width - n_i pad slots, then its tokens.
        pad = torch.arange(width)[None, :] < (width - torch.tensor(lengths))[:, None]
        source = (
            starts[:, None]
            + torch.arange(width)[None, :]
            - (width - torch.tensor(lengths))[:, None]
        )
        source = source.clamp(min=0).masked_fill(pad, 0)
        dev = self._device
        ids, positions, bias = ids.to(dev), positions.to(dev), bias.to(dev)
        source, pad = source.to(dev), pad.to(dev)
        kwargs: dict[str, Any] = {}
        if self._use_adapters:
            kwargs["adapter_names"] = [seqs[0].adapter_id or BASE_ADAPTER]
        with torch.inference_mode():
            out = self._model(
                input_ids=ids,
                attention_mask=bias,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=(ends - 1).to(dev),
                **{self._cache_kw: DynamicCache()},
                **kwargs,
            )
            steps, chosen = self._pick(out.logits[0], seqs)
            blank = pad[:, None, :, None]
            keys, values = [], []
            for layer in returned_cache(out).layers:
                # [1, heads, total, dim] -> [rows, heads, width, dim]
                keys.append(layer.keys[0][:, source].transpose(0, 1).masked_fill(blank, 0.0))
                values.append(layer.values[0][:, source].transpose(0, 1).masked_fill(blank, 0.0))
            mask = (~pad).long()
            self._merge(keys, values, mask, torch.tensor(lengths, device=dev), chosen, seqs)
        return steps

    def _prefill_padded(self, seqs: Sequence[Sequence_]) -> list[TokenStep]:
        from transformers import DynamicCache

        torch = self._torch
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            n = len(s.prompt_ids)
            ids[i, width - n :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits, cache = self._forward(ids, mask, positions, DynamicCache(), seqs)
            steps, chosen = self._pick(logits, seqs)
            # Zero the cache at padding: those positions are masked, but a NaN
            # computed there would still poison the weighted sum (0 * NaN).
            pad = (mask == 0)[:, None, :, None]
            keys = [layer.keys.masked_fill(pad, 0.0) for layer in cache.layers]
            values = [layer.values.masked_fill(pad, 0.0) for layer in cache.layers]
            self._merge(keys, values, mask, positions[:, -1] + 1, chosen, seqs)
        return steps

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
            steps, chosen = self._pick(logits, self._rows)
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
        self, logits: torch.Tensor, rows: Sequence[Sequence_]
    ) -> tuple[list[TokenStep], torch.Tensor]:
        torch = self._torch
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        # -sum(p log p); clamping keeps 0 * -inf (a masked token) from becoming NaN.
        # Cheaper than torch.special.entr, which computes its own log.
        finite = logprobs.clamp_min(torch.finfo(logprobs.dtype).min)
        entropy = -(logprobs.exp() * finite).sum(-1)
        chosen = logits.argmax(-1)
        for i, seq in enumerate(rows):
            if seq.params.temperature > 0:
                chosen[i] = self._sample(logits[i], seq)
        picked = logprobs.gather(1, chosen[:, None])[:, 0]
        steps = [
            TokenStep(int(t), float(lp), max(float(h), 0.0))
            for t, lp, h in zip(chosen.tolist(), picked.tolist(), entropy.tolist(), strict=True)
        ]
        return steps, chosen

    def _sample(self, row: torch.Tensor, seq: Sequence_) -> int:
        torch = self._torch
        p = seq.params
        gen = self._generators.get(id(seq))
        if gen is None:
            gen = torch.Generator(device=row.device)
            if p.seed is not None:
                gen.manual_seed(p.seed)
            else:
                gen.seed()
            self._generators[id(seq)] = gen
        scores = row / p.temperature
        if 0 < p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cum = sorted_scores.softmax(-1).cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (always the best token).
            drop = cum - sorted_scores.softmax(-1) >= p.top_p
            scores = scores.scatter(0, order[drop], float("-inf"))
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=gen))


def _pad_left(t: torch.Tensor, extra: int, dim: int) -> torch.Tensor:
    """``t`` with ``extra`` zero columns prepended along ``dim``."""
    if extra == 0:
        return t
    import torch

    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)
