"""Settings of the escalation policies (``[device.router]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgecloud.common.settings import Section

__all__ = [
    "RouterConfig",
]


class RouterConfig(Section):
    """Escalation policy settings (see edgecloud.router)."""

    window: int = Field(8, ge=1, le=512, description="Tokens in the confidence window.")
    min_mean_logprob: float = Field(
        -1.5, le=0, description="Hand off when the window's mean logprob falls below this."
    )
    max_mean_entropy: float = Field(
        float("inf"), gt=0, description="Hand off when the window's mean entropy exceeds this."
    )
    min_tokens: int = Field(
        4, ge=1, le=4096, description="Local tokens before a hand-off may fire."
    )
    max_local_tokens: int | None = Field(
        None, ge=1, description="No hand-off after this many local tokens."
    )
    holdback_tokens: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "Local tokens kept from the app until this many are confidently produced, so a "
            "short answer that starts wrong is never shown from its wrong start (costs this "
            "many tokens of latency). A hand-off within them shows only what the cloud keeps "
            "of them (device.cloud.verify_handoff), or, unverified, discards them and the "
            "cloud answers from scratch."
        ),
    )
    show_unverified: bool = Field(
        True,
        description=(
            "Stream local tokens as they come. False, for apps that cannot take text back: "
            "while a mid-answer hand-off may still happen, local text is held until the "
            "local answer finishes or the cloud has verified it (per request: the "
            "`show_unverified` option)."
        ),
    )
    learned_path: Path | None = Field(
        None, description="A LearnedRouter JSON; enables pre-generation prediction."
    )
    learned_threshold: float = Field(
        0.5, ge=0, le=1, description="Escalate before generating when p(poor) >= this."
    )
    privacy_patterns: dict[str, str] | None = Field(
        None, description="name -> regex of personal data kept local; None = built-in set."
    )
    privacy_detectors: list[Literal["secrets", "pii"]] = Field(
        ["secrets", "pii"],
        description=(
            "Maintained detectors run after privacy_patterns (the `privacy` extra): `secrets` "
            "(detect-secrets: API keys, cloud credentials, tokens, private keys, passwords) "
            "and `pii` (presidio-analyzer pattern recognizers: IP and MAC addresses, dates of "
            "birth, street addresses, password text); [] = the patterns only."
        ),
    )
    privacy_entities: list[str] | None = Field(
        None,
        description=(
            "Presidio entity names the `pii` detector checks; None = IP_ADDRESS, MAC_ADDRESS, "
            "DATE_OF_BIRTH, STREET_ADDRESS, PASSWORD."
        ),
    )
    privacy_strict: bool = Field(
        False,
        description=(
            "Fail at start when a detector's library is missing; False: warn and use the "
            "smaller built-in fallback patterns."
        ),
    )
    budget_tokens_per_hour: int = Field(
        0,
        ge=0,
        description=(
            "Cloud tokens per hour; 0 = no cap. What was spent is kept in the escalation "
            "log's database (device.log), so a restarted device keeps counting it."
        ),
    )
    budget_tokens_per_day: int = Field(0, ge=0, description="Cloud tokens per day; 0 = no cap.")
