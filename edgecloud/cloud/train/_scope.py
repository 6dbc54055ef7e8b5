"""The adapter's scope: which requests an adapter trained in a round is for."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgecloud.cloud.train._examples import TrainingExample, common_prompt_prefix

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
) -> AdapterScope | None:
    """The requests an adapter trained on ``examples`` is for, or None when it cannot tell.

    Inside: the prompts the adapter learned an answer for (escalations, and replayed
    answers the knowledge base contradicted); outside: the replayed prompts
    (``device.log.replay_rate``: what the device already answered well). A logistic
    head (:class:`edgecloud.router.LearnedRouter`, the learned router's fit) on their
    sentence embeddings, without the prompt lines all examples share (few-shot
    examples say nothing about a request). None without examples of both kinds.
    """
    from edgecloud.adapters._manifest import AdapterScope
    from edgecloud.router import LearnedRouter

    inside = [ex.prompt for ex in examples if not ex.replay]
    outside = [ex.prompt for ex in examples if ex.replay]
    if not inside or not outside:
        log.warning("no adapter scope: it needs escalated and replayed records (%d and %d); "
                    "the adapter will answer every request", len(inside), len(outside))  # fmt: skip
        return None
    if encoder is None:
        from edgecloud.common.encoder import SentenceEncoder

        encoder = SentenceEncoder()
    prefix = common_prompt_prefix(examples)
    texts = [p[len(prefix) :] if p.startswith(prefix) else p for p in inside + outside]
    head = LearnedRouter.fit(encoder.encode(texts), [True] * len(inside) + [False] * len(outside))
    return AdapterScope(
        encoder=encoder.identity,
        strip_prefix=prefix,
        weights=tuple(float(w) for w in head.weights),
        bias=head.bias,
        threshold=threshold,
    )
