"""The adapter's scope: which requests an adapter trained in a round is for."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgecloud.cloud.train._examples import TrainingExample, common_prompt_prefix, grounded

if TYPE_CHECKING:
    from edgecloud.adapters._manifest import AdapterScope
    from edgecloud.common.encoder import SentenceEncoder

__all__ = ["fit_scope"]

log = logging.getLogger("edgecloud.cloud")


def fit_scope(
    examples: Sequence[TrainingExample],
    *,
    threshold: float = 0.5,
    encoder: SentenceEncoder | None = None,
    inside: str = "grounded",
) -> AdapterScope | None:
    """The requests an adapter trained on ``examples`` is for, or None when it cannot tell.

    Inside, with ``inside="learned"``: the prompts the adapter learned an answer for
    (escalations, and replayed answers the knowledge base contradicted). With
    ``inside="grounded"`` (the default): only those whose answer the knowledge
    passages retrieved for them support (:func:`grounded`), when there are any. The
    cloud is worth asking for what it holds and the device lacks; an escalated
    general question it answered from its own weights taught the adapter little, and
    an adapter that answers such questions under thresholds calibrated for its
    domain lets the device stay confidently wrong where the base model escalated.
    Outside: the replayed prompts (``device.log.replay_rate``: what the device
    already answered well) and the learned prompts left out. A logistic head
    (:class:`edgecloud.router.LearnedRouter`, the learned router's fit) on their
    sentence embeddings, without the prompt lines all examples share (few-shot
    examples say nothing about a request). None without examples of both kinds.
    """
    from edgecloud.adapters._manifest import AdapterScope
    from edgecloud.router import LearnedRouter

    if inside not in ("grounded", "learned"):
        raise ValueError(f"inside must be 'grounded' or 'learned', not {inside!r}")
    learned = [ex for ex in examples if not ex.replay]
    chosen = learned
    if inside == "grounded":
        found = [ex for ex in learned if ex.passages and grounded(ex.answer, ex.passages)]
        if found:
            chosen = found
        else:
            log.info("adapter scope: no learned answer is grounded in knowledge passages; "
                     "the scope holds every learned prompt")  # fmt: skip
    picked = {id(ex) for ex in chosen}
    inside_prompts = [ex.prompt for ex in chosen]
    outside = [ex.prompt for ex in examples if id(ex) not in picked]
    if not inside_prompts or not outside:
        log.warning(
            "no adapter scope: it needs escalated and replayed records (%d and %d); "
            "the adapter will answer every request", len(inside_prompts), len(outside),
        )  # fmt: skip
        return None
    if encoder is None:
        from edgecloud.common.encoder import SentenceEncoder

        encoder = SentenceEncoder()
    prefix = common_prompt_prefix(examples)
    texts = [p[len(prefix) :] if p.startswith(prefix) else p for p in inside_prompts + outside]
    labels = [True] * len(inside_prompts) + [False] * len(outside)
    head = LearnedRouter.fit(encoder.encode(texts), labels)
    return AdapterScope(
        encoder=encoder.identity,
        strip_prefix=prefix,
        weights=tuple(float(w) for w in head.weights),
        bias=head.bias,
        threshold=threshold,
    )
