"""Settings of split inference (``[split]``): encoding, link estimate, cut objective, and
the service that runs the cloud's tails (``[split.serve]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgecloud.common.settings import Section
from edgecloud.transport._settings import AuthConfig, TlsConfig

__all__ = [
    "SplitConfig",
    "SplitPowerConfig",
    "SplitServeConfig",
]


class SplitPowerConfig(Section):
    """Device power model for ``objective = "energy"`` (watts; defaults: a phone-class SoC)."""

    compute_w: float = Field(3.0, gt=0, le=1000, description="Device power while running the head.")
    radio_w: float = Field(1.5, ge=0, le=1000, description="Radio power while sending/receiving.")
    idle_w: float = Field(0.3, ge=0, le=1000, description="Power while waiting for the cloud.")


class SplitServeConfig(Section):
    """The split and KServe v2 service (`edgecloud split serve`); the same security as the
    cloud service."""

    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(50061, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    insecure: bool = Field(
        False,
        description="Serve plain text without TLS; allowed only on a loopback host.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig)
    auth: AuthConfig | None = Field(
        None,
        description=(
            "Per-device bearer tokens (sha256 digests, as in cloud.auth); unset: the "
            "cloud's (cloud.auth.tokens), so one token list serves both services."
        ),
    )
    shutdown_grace_s: float = Field(
        2.0, ge=0.0, le=3600.0, description="On SIGTERM, time given to in-flight calls."
    )


class SplitConfig(Section):
    """Split inference of tensor models: partitioning, activation transfer, cut choice."""

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
            "Emulate a slower device: after the head runs, wait until it has taken factor x "
            "its time on this host (its own time for the first calls, then fixed at their "
            "median). For benchmarks on a host much faster than the target board."
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
    serve: SplitServeConfig = Field(default_factory=SplitServeConfig)
