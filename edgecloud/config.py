"""Settings: the root of every section, filled from a TOML file and ``EDGECLOUD_*`` variables.

Precedence, highest first: keyword overrides, environment variables
(``EDGECLOUD_DEVICE__MODEL__N_CTX=4096``; nested keys joined by ``__``), the TOML
file (``EDGECLOUD_CONFIG`` or the path given to :meth:`Settings.load`), defaults.
Unknown keys and out-of-range values fail at start with a
:class:`~edgecloud.errors.ConfigError` naming the field.

Example ``device.toml``::

    [device.model]
    path = "/opt/models/my-model.gguf"   # omit for the embedded default
    n_ctx = 4096
    n_threads = 2

    [device.generation]
    max_tokens = 128
    stop = ["\\nUser:"]
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edgecloud.cloud._settings import (
    CloudAuthConfig,
    CloudConfig,
    CloudKnowledgeConfig,
    CloudMetricsConfig,
    CloudModelConfig,
    CloudRecordsConfig,
    CloudRegistryConfig,
    CloudTlsConfig,
    CloudTrainConfig,
)
from edgecloud.common.settings import default_cache_dir, format_validation_error
from edgecloud.device._settings import (
    DeviceAdaptersConfig,
    DeviceCloudConfig,
    DeviceConfig,
    DeviceHttpConfig,
    DeviceShadowConfig,
    EndpointConfig,
    EscalationLogConfig,
    LocalModelConfig,
)
from edgecloud.errors import ConfigError
from edgecloud.router._settings import RouterConfig
from edgecloud.split._settings import SplitConfig, SplitPowerConfig

__all__ = [
    "CloudAuthConfig",
    "CloudConfig",
    "CloudKnowledgeConfig",
    "CloudMetricsConfig",
    "CloudModelConfig",
    "CloudRecordsConfig",
    "CloudRegistryConfig",
    "CloudTlsConfig",
    "CloudTrainConfig",
    "DeviceAdaptersConfig",
    "DeviceCloudConfig",
    "DeviceConfig",
    "DeviceHttpConfig",
    "DeviceShadowConfig",
    "EndpointConfig",
    "EscalationLogConfig",
    "LocalModelConfig",
    "RouterConfig",
    "Settings",
    "SplitConfig",
    "SplitPowerConfig",
    "default_cache_dir",
    "format_validation_error",
]


class Settings(BaseSettings):
    """Root settings of an edgecloud process."""

    model_config = SettingsConfigDict(
        env_prefix="EDGECLOUD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where assembled models and other caches live.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Logging level of the edgecloud logger."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description=(
            "Log lines on stderr: plain text, or one JSON object per line with the "
            "request id (see docs/observability.md)."
        ),
    )
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _TOML_PATH.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, a TOML file, the environment and overrides.

        Args:
            path: TOML file; defaults to ``$EDGECLOUD_CONFIG`` when set.
            **overrides: top-level fields, highest precedence.

        Raises:
            ConfigError: the file is missing or not TOML, or a value is invalid.
        """
        if path is None:
            path = os.environ.get("EDGECLOUD_CONFIG") or None
        toml_path = Path(path) if path is not None else None
        if toml_path is not None and not toml_path.is_file():
            raise ConfigError(f"config file not found: {toml_path}")
        token = _TOML_PATH.set(toml_path)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            where = _where(exc, toml_path)
            raise ConfigError(f"invalid settings{where}: {format_validation_error(exc)}") from exc
        except ValueError as exc:  # tomllib.TOMLDecodeError and friends
            raise ConfigError(f"cannot read config {toml_path}: {exc}") from exc
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            raise ConfigError(f"cannot read config {toml_path}: nested too deeply") from None
        finally:
            _TOML_PATH.reset(token)


def _where(exc: ValidationError, toml_path: Path | None) -> str:
    """Where the bad values came from: the ``EDGECLOUD_*`` variables that set a field in
    error (or one of its sections), else the TOML file."""
    env = {k.upper() for k in os.environ if k.upper().startswith("EDGECLOUD_")}
    named: set[str] = set()
    from_file = 0
    for err in exc.errors():
        loc = [str(p).upper() for p in err["loc"]]
        found = [
            n for i in range(len(loc), 0, -1) if (n := "EDGECLOUD_" + "__".join(loc[:i])) in env
        ]
        if found:
            named.add(found[0])
        else:
            from_file += 1
    parts = [f"from {', '.join(sorted(named))}"] if named else []
    if toml_path is not None and from_file:
        parts.append(f"in {toml_path}")
    return " " + " and ".join(parts) if parts else ""


# The TOML file of the `Settings.load` call in progress; a context variable so
# that concurrent loads in threads or tasks do not see each other's file.
_TOML_PATH: ContextVar[Path | None] = ContextVar("edgecloud_toml_path", default=None)
