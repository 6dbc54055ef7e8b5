"""The base model a round trains on, and the GGUF its adapter is bound to."""

from __future__ import annotations

from pathlib import Path

from edgecloud.cloud._settings import CloudSettings
from edgecloud.errors import ConfigError

__all__ = ["base_model"]


def base_model(
    settings: CloudSettings, base_gguf: Path | None = None
) -> tuple[Path, Path, str, str]:
    """(HF model dir to train, base GGUF the devices run, its sha256, its architecture).

    The base GGUF is ``base_gguf``, else ``cloud.model.path`` when it is a GGUF,
    else the embedded default; the HF directory is its cached dequantization
    (or ``cloud.model.path`` when that is a directory, which then needs
    ``base_gguf`` to say what the devices run).

    Raises:
        ConfigError: the cloud model is a directory and no base GGUF was named.
    """
    from edgecloud.cloud._torch import resolve_model_dir
    from edgecloud.common.files import sha256_file
    from edgecloud.common.models import ensure_default_model

    configured = settings.cloud.model.path
    if base_gguf is None:
        if configured is not None and configured.expanduser().is_dir():
            raise ConfigError(
                "cloud.model.path is a model directory: name the GGUF the devices run "
                "(--base-gguf) so the adapter is bound to it"
            )
        base_gguf = (
            configured.expanduser()
            if configured is not None
            else ensure_default_model(settings.cache_dir)
        )
    if not base_gguf.is_file():
        raise ConfigError(f"base GGUF not found: {base_gguf}")
    model_dir, _ = resolve_model_dir(settings)
    return model_dir, base_gguf, sha256_file(base_gguf), _architecture(base_gguf)


def _architecture(gguf_path: Path) -> str:
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    field_ = reader.get_field("general.architecture")
    value = field_.contents() if field_ is not None else None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{gguf_path} has no general.architecture")
    return value
