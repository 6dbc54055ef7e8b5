"""Settings: pydantic models filled from a TOML file and ``EDGECLOUD_*`` variables.

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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edgecloud.errors import ConfigError
from edgecloud.types import SamplingParams

__all__ = [
    "CloudAuthConfig",
    "CloudConfig",
    "CloudModelConfig",
    "CloudTlsConfig",
    "DeviceConfig",
    "LocalModelConfig",
    "Settings",
    "SplitConfig",
    "SplitPowerConfig",
    "default_cache_dir",
    "format_validation_error",
]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgecloud``, or ``~/.cache/edgecloud``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecloud"


def _default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class LocalModelConfig(BaseModel):
    """The on-device language model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = Field(
        None, description="GGUF file to load; None loads the embedded default model."
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of `path`, checked before loading when set.",
    )
    n_ctx: int = Field(2048, ge=64, le=262_144, description="Context window in tokens.")
    n_batch: int = Field(512, ge=8, le=16_384, description="Prompt tokens per decode call.")
    n_threads: int = Field(
        default_factory=_default_threads, ge=1, le=512, description="CPU threads for decoding."
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto", description="llama.cpp flash attention; 'auto' lets llama.cpp decide."
    )
    chat_template: str = Field(
        "auto",
        min_length=1,
        description=(
            "'auto' uses the model's own template when the GGUF has one, else 'plain'; "
            "'plain' is the documented User:/Assistant: template; anything else is a "
            "Jinja2 template with `messages` and `add_generation_prompt`."
        ),
    )


class DeviceConfig(BaseModel):
    """Everything the device runtime needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: LocalModelConfig = Field(default_factory=LocalModelConfig)
    generation: SamplingParams = Field(
        default_factory=SamplingParams, description="Defaults for each request."
    )


class CloudModelConfig(BaseModel):
    """The model the cloud service runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = Field(
        None,
        description=(
            "A GGUF file (dequantized once, cached as safetensors) or a Hugging Face model "
            "directory; None loads the embedded default GGUF the devices run."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' picks CUDA when present, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bfloat16 on CUDA and float32 on CPU."
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=512,
        description=(
            "CPU threads for torch; None keeps torch's default (one per core). On small "
            "shared VMs 1 can be much faster: see cloud/cloud.example.toml."
        ),
    )
    adapters: dict[str, Path] = Field(
        default_factory=dict,
        description="LoRA adapters (peft directories) loaded at start, by adapter id.",
    )


class CloudTlsConfig(BaseModel):
    """TLS for the cloud service; mTLS when `client_ca` is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert: Path | None = Field(None, description="PEM server certificate chain.")
    key: Path | None = Field(None, description="PEM private key of `cert`.")
    client_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed."
    )


class CloudAuthConfig(BaseModel):
    """Per-device bearer tokens, stored as sha256 hex digests (`edgecloud cloud hash-token`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: dict[str, str] = Field(
        default_factory=dict,
        description="device id -> sha256 hex digest of its token; empty disables auth.",
    )
    adapters: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "device id -> adapter ids it may use; a device not listed may use all of them."
        ),
    )

    @field_validator("tokens")
    @classmethod
    def _hashes_are_sha256(cls, value: dict[str, str]) -> dict[str, str]:
        for device, digest in value.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"token of {device!r} must be a sha256 hex digest, not a token")
        return value


class CloudConfig(BaseModel):
    """The cloud inference service (`edgecloud cloud serve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    insecure: bool = Field(
        False,
        description="Serve plain text without TLS; allowed only on a loopback host.",
    )
    model: CloudModelConfig = Field(default_factory=CloudModelConfig)
    tls: CloudTlsConfig = Field(default_factory=CloudTlsConfig)
    auth: CloudAuthConfig = Field(default_factory=CloudAuthConfig)
    max_running_sequences: int = Field(
        32, ge=1, le=4096, description="Sequences decoded together in one batch, at most."
    )
    max_queued_requests: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Requests waiting for a batch slot; beyond it calls fail at once.",
    )
    max_new_tokens: int = Field(
        4096, ge=1, le=1 << 20, description="Largest `max_tokens` a request may ask for."
    )
    default_max_tokens: int = Field(
        256, ge=1, le=1 << 20, description="`max_tokens` of requests that leave it unset."
    )
    max_context_tokens: int = Field(
        8192, ge=16, le=1 << 20, description="Prompt plus new tokens of one sequence, at most."
    )
    max_message_bytes: int = Field(
        1 << 20, ge=1024, le=1 << 30, description="Largest gRPC message received or sent."
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0.0, le=3600.0, description="On SIGTERM, time given to in-flight streams."
    )
    admission_window_ms: float = Field(
        2.0,
        ge=0.0,
        le=1000.0,
        description=(
            "When idle, wait this long after the first request so that requests arriving "
            "together are prefilled in one batch."
        ),
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> CloudConfig:
        if self.default_max_tokens > self.max_new_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_new_tokens "
                f"({self.max_new_tokens})"
            )
        return self


class SplitPowerConfig(BaseModel):
    """Device power model for ``objective = "energy"`` (watts; defaults: a phone-class SoC)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute_w: float = Field(3.0, gt=0, le=1000, description="Device power while running the head.")
    radio_w: float = Field(1.5, ge=0, le=1000, description="Radio power while sending/receiving.")
    idle_w: float = Field(0.3, ge=0, le=1000, description="Power while waiting for the cloud.")


class SplitConfig(BaseModel):
    """Split inference of tensor models: partitioning, activation transfer, cut choice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: Literal["latency", "energy"] = Field(
        "latency", description="What the cut minimizes: end-to-end latency or device energy."
    )
    encoding: Literal["float32", "float16", "int8"] = Field(
        "float16", description="How activations cross the wire."
    )
    compression: Literal["none", "zstd"] = Field(
        "none", description="zstd-compress activations after encoding."
    )
    chunk_bytes: int = Field(
        256 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest data chunk on the wire."
    )
    max_activation_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=4 * 1024 * 1024 * 1024,
        description="Largest activation (decoded) either side accepts; larger is refused.",
    )
    device_slowdown: float = Field(
        1.0,
        ge=1.0,
        le=1000.0,
        description=(
            "Emulate a slower device: after the head runs, wait (factor - 1) x its measured "
            "time. For benchmarks on a host much faster than the target board."
        ),
    )
    link_alpha: float = Field(
        0.3, gt=0, le=1, description="Weight of the newest sample in the link's moving estimate."
    )
    probe_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Payload of a bandwidth probe."
    )
    power: SplitPowerConfig = Field(default_factory=SplitPowerConfig)
    models: dict[str, Path] = Field(
        default_factory=dict,
        description="Cloud side: tensor models served for split tails and KServe v2, by name.",
    )


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
            where = f" in {toml_path}" if toml_path else ""
            raise ConfigError(f"invalid settings{where}: {format_validation_error(exc)}") from exc
        except ValueError as exc:  # tomllib.TOMLDecodeError and friends
            raise ConfigError(f"cannot read config {toml_path}: {exc}") from exc
        finally:
            _TOML_PATH.reset(token)


# The TOML file of the `Settings.load` call in progress; a context variable so
# that concurrent loads in threads or tasks do not see each other's file.
_TOML_PATH: ContextVar[Path | None] = ContextVar("edgecloud_toml_path", default=None)


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``dotted.field: message (got value)``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        parts.append(f"{loc}: {err['msg']} (got {shown})")
    return "; ".join(parts)
