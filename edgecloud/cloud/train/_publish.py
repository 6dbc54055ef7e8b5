"""A round's adapter as a signed version in the registry, rolled out to devices."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.cloud._settings import CloudSettings
from edgecloud.cloud.train._lora import TrainReport
from edgecloud.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgecloud.adapters._manifest import AdapterCalibration, AdapterScope

__all__ = ["load_signing_key", "publish_version"]


def load_signing_key(settings: CloudSettings) -> Ed25519PrivateKey:
    """The registry's signing key (``cloud.registry.signing_key``).

    Raises:
        ConfigError: none is configured, or it cannot be read.
    """
    from edgecloud.adapters._signing import load_private_key

    if settings.cloud.registry.signing_key is None:
        raise ConfigError(
            "publishing needs cloud.registry.signing_key (make one: edgecloud adapters keygen)"
        )
    return load_private_key(settings.cloud.registry.signing_key)


def publish_version(
    settings: CloudSettings,
    key: Ed25519PrivateKey,
    *,
    gguf: Path,
    peft_dir: Path,
    base_sha256: str,
    architecture: str,
    report: TrainReport,
    scope: AdapterScope | None,
    since: float | None,
    until: float | None,
    records: int,
    rollout_percent: float,
    calibration: AdapterCalibration | None = None,
) -> int:
    """Sign the adapter's files into a new version of ``cloud.train.adapter_id`` and roll
    it out to ``rollout_percent`` of the devices; returns the version."""
    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.cloud._server import registry_url

    cfg = settings.cloud.train
    registry = AdapterRegistry(registry_url(settings.cloud, settings.cache_dir))
    manifest = registry.publish(
        {
            "adapter.gguf": gguf,
            "peft/adapter_config.json": peft_dir / "adapter_config.json",
            "peft/adapter_model.safetensors": peft_dir / "adapter_model.safetensors",
        },
        key=key,
        adapter_id=cfg.adapter_id,
        base_model_sha256=base_sha256,
        base_architecture=architecture,
        rank=cfg.rank,
        alpha=cfg.alpha,
        target_modules=list(cfg.target_modules),
        data=_data(since, until, records, report),
        metrics=report.metrics(),
        canary=report.canary,
        scope=scope,
        calibration=calibration,
    )
    registry.rollout(cfg.adapter_id, manifest.version, rollout_percent)
    return manifest.version


def _data(since: float | None, until: float | None, records: int, report: TrainReport) -> Any:
    def ts(value: float | None) -> datetime | None:
        return datetime.fromtimestamp(value, timezone.utc) if value is not None else None

    return {
        "since": ts(since),
        "until": ts(until if until is not None else time.time()),
        "records": records,
        "train": report.train,
        "holdout": report.holdout,
        "with_passages": report.passages > 0,
    }
