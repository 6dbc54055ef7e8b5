"""The device runtime: local models, their backends, and the embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edgecloud.backends import (
    BackendInfo,
    LocalBackend,
    TensorBackend,
    TensorSpec,
    TextBackend,
)
from edgecloud.common.models import (
    DEFAULT_MODEL_NAME,
    ProgressCallback,
    default_model_path,
    ensure_default_model,
)
from edgecloud.common.settings import format_validation_error
from edgecloud.device._settings import DeviceSettings, LocalModelConfig
from edgecloud.errors import ConfigError

if TYPE_CHECKING:
    from edgecloud.backends import LlamaCppBackend, OnnxBackend

__all__ = [
    "DEFAULT_MODEL_NAME",
    "BackendInfo",
    "LlamaCppBackend",
    "LocalBackend",
    "OnnxBackend",
    "ProgressCallback",
    "TensorBackend",
    "TensorSpec",
    "TextBackend",
    "default_model_path",
    "ensure_default_model",
    "load_text_backend",
]


def load_text_backend(
    settings: DeviceSettings,
    *,
    model: str | Path | None = None,
    progress: ProgressCallback | None = None,
    **overrides: Any,
) -> TextBackend:
    """Load the configured local language model.

    Args:
        settings: where ``device.model`` and ``cache_dir`` come from.
        model: a GGUF path overriding ``device.model.path``.
        progress: reports assembly of the embedded default model, if it runs.
        **overrides: fields of :class:`LocalModelConfig` (``n_ctx``, ``n_threads``, ...).

    Raises:
        ConfigError: an override is not a valid model setting.
        ModelLoadError: the model cannot be loaded (see the error tree).
    """
    from edgecloud.backends.llama_cpp import LlamaCppBackend

    fields = settings.device.model.model_dump()
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if model is not None:
        fields["path"] = model
    try:
        cfg = LocalModelConfig.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(f"invalid device.model: {format_validation_error(exc)}") from exc
    path = cfg.path
    if path is None:
        path = ensure_default_model(settings.cache_dir, progress=progress)
    return LlamaCppBackend(
        path,
        n_ctx=cfg.n_ctx,
        n_batch=cfg.n_batch,
        n_threads=cfg.n_threads,
        chat_template=cfg.chat_template,
        sha256=cfg.sha256,
        flash_attn=cfg.flash_attn,
    )


def __getattr__(name: str) -> Any:
    if name in ("LlamaCppBackend", "OnnxBackend"):
        from edgecloud import backends

        return getattr(backends, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
