"""Settings of split inference (``[split]``): encoding, link estimate, cut objective."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgecloud.common.settings import Section

__all__ = [
    "SplitConfig",
    "SplitPowerConfig",
]


class SplitPowerConfig(Section):
    """Device power model for ``objective = "energy"`` (watts; defaults: a phone-class SoC)."""

    compute_w: float = Field(3.0, gt=0, le=1000, description="Device power while running the head.")
    radio_w: float = Field(1.5, ge=0, le=1000, description="Radio power while sending/receiving.")
    idle_w: float = Field(0.3, ge=0, le=1000, description="Power while waiting for the cloud.")


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
