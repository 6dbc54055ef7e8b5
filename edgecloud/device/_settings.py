"""Settings of the device runtime (``[device]``): model, cloud endpoints, log, adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, field_validator

from edgecloud.common.settings import Section, default_threads
from edgecloud.discovery._settings import DeviceDiscoveryConfig, Interfaces, check_interfaces
from edgecloud.router._settings import RouterConfig
from edgecloud.types import SamplingParams

__all__ = [
    "MAX_DRAFT_TOKENS",
    "DeviceAdaptersConfig",
    "DeviceCloudConfig",
    "DeviceConfig",
    "DeviceHttpConfig",
    "DeviceSettings",
    "DeviceShadowConfig",
    "EndpointConfig",
    "EscalationLogConfig",
    "LocalModelConfig",
]

MAX_DRAFT_TOKENS = 64
"""Longest speculative draft (``device.cloud.speculative_tokens``, the ``speculative``
option)."""


class LocalModelConfig(Section):
    """The on-device language model."""

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
        default_factory=default_threads, ge=1, le=512, description="CPU threads for decoding."
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


class EndpointConfig(Section):
    """One cloud inference service the device may escalate to."""

    target: str = Field(min_length=3, description="host:port of the cloud service.")
    token: str | None = Field(
        None, min_length=8, description="This device's bearer token (prefer token_file)."
    )
    token_file: Path | None = Field(None, description="File holding the bearer token.")
    tls: bool = Field(True, description="Use TLS; False is accepted for loopback targets only.")
    root_certificates: Path | None = Field(None, description="PEM CA bundle to trust.")
    client_cert: Path | None = Field(None, description="PEM certificate for mTLS.")
    client_key: Path | None = Field(None, description="PEM private key for mTLS.")

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


class DeviceCloudConfig(Section):
    """Where and how the device escalates."""

    endpoints: list[EndpointConfig] = Field(
        default_factory=list, max_length=16, description="In order of preference; empty = offline."
    )
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Deadline of one cloud stream.")
    first_token_timeout_s: float = Field(
        5.0, gt=0, le=600, description="Give up on an endpoint that sends no token by then."
    )
    health_interval_s: float = Field(
        10.0, gt=0, le=3600, description="Seconds between health probes of the endpoints."
    )
    breaker_failures: int = Field(3, ge=1, le=100, description="Failures that open a breaker.")
    breaker_cooldown_s: float = Field(
        30.0, gt=0, le=3600, description="Seconds before an open breaker lets a trial through."
    )
    verify_handoff: bool = Field(
        True,
        description=(
            "A mid-answer hand-off asks the cloud to verify the device's text first: it keeps "
            "the longest part it agrees with and answers on from there (text the app was "
            "shown and the cloud rejected is taken back, see Chunk.retracted). False: the "
            "cloud continues the device's text as it is."
        ),
    )
    speculative_tokens: int = Field(
        0,
        ge=0,
        le=MAX_DRAFT_TOKENS,
        description=(
            "Edge-cloud speculative decoding of greedy answers the cloud gives from their "
            "start: the device drafts this many tokens, the cloud verifies them in one pass "
            "and adds one; the answer is the cloud's own. 0: off (the cloud streams its "
            "answer). Per request: the `speculative` option."
        ),
    )


class EscalationLogConfig(Section):
    """The device's store-and-forward log of escalations."""

    enabled: bool = Field(True, description="Record escalations.")
    path: Path | None = Field(None, description="SQLite file; default <cache_dir>/escalations.db.")
    max_records: int = Field(10_000, ge=1, le=10_000_000, description="Oldest evicted beyond this.")
    upload_interval_s: float = Field(
        30.0, gt=0, le=86_400, description="Seconds between upload attempts."
    )
    upload_batch: int = Field(100, ge=1, le=10_000, description="Records per upload call.")
    replay_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Share of confident local answers (the router watched and did not hand off) "
            "also logged, as replay records: training mixes them in so an adapter keeps "
            "what the device already answers well."
        ),
    )


class DeviceShadowConfig(Section):
    """Shadow checks: confident local answers also asked of the cloud, in the background.

    A confident answer never escalates, so a device that is confidently wrong (after an
    adapter swap, say) goes unseen. A shadow check asks the cloud the same prompt after
    the answer was delivered and records whether the two agree: the disagreements are
    labelled examples for the next round, and the confidently-wrong rate per adapter
    version is what ``edgecloud cloud shadow`` reports.
    """

    rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Share of confident local answers (the router watched and did not hand off; "
            "the answer ended by itself) also asked of the cloud in the background, off "
            "the answer's path, within the device.router budget. 0: off."
        ),
    )
    max_in_flight: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Shadow checks running at once; an answer sampled while that many run is not "
            "checked (never queued)."
        ),
    )
    timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds a shadow check may take; one that takes longer is dropped.",
    )


class DeviceAdaptersConfig(Section):
    """LoRA adapters the device receives from the cloud, verifies and hot-swaps."""

    enabled: bool = Field(
        False, description="Watch the cloud for adapters, install and hot-swap them."
    )
    adapter_id: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The adapter line this device follows (a registry target).",
    )
    device_id: str | None = Field(
        None,
        max_length=128,
        description="Identity for staged rollouts and version reports; None: the host name.",
    )
    cohort: str | None = Field(
        None,
        max_length=64,
        description="Rollout cohort (e.g. 'lab'): a staged rollout to it reaches this device.",
    )
    directory: Path | None = Field(
        None, description="Installed versions live here; None: <cache_dir>/adapters."
    )
    public_keys: list[str] = Field(
        default_factory=list,
        description=(
            "Trusted Ed25519 public keys (base64 of the 32 raw bytes, or a path to a PEM "
            "file). An adapter signed by none of them is refused; with none configured, "
            "every adapter is refused."
        ),
    )
    keep: int = Field(3, ge=1, le=100, description="Installed versions kept on disk.")
    scale: float = Field(1.0, gt=0.0, le=4.0, description="LoRA scale applied at swap time.")
    scope: bool = Field(
        True,
        description=(
            "Apply an adapter only to the requests inside the scope its version carries "
            "(a head over the prompt's sentence embedding, fitted by the trainer); the rest "
            "are answered by the base model. Off: the adapter answers every request."
        ),
    )
    calibration: bool = Field(
        True,
        description=(
            "Escalate the requests an adapter answers at the thresholds its version carries "
            "(fitted by the round on held-out examples as devices run them) while it runs, "
            "and check them in the canary; the device's own device.router thresholds "
            "return with the base model. Off: device.router thresholds for every request."
        ),
    )
    canary: Path | None = Field(
        None,
        description=(
            'JSONL of canary prompts ({"prompt": ..., "expect": ...}) run after each '
            "swap; None: run the adapter's own canary set from its manifest, if any."
        ),
    )
    canary_min_pass: float = Field(
        0.8, ge=0.0, le=1.0, description="Fraction of canary prompts that must pass."
    )
    reconnect_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="Wait before re-opening a broken watch stream."
    )


class DeviceHttpConfig(Section):
    """The OpenAI-compatible HTTP endpoint (``edgecloud device serve``)."""

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to listen on; 0.0.0.0 exposes the model to the network.",
    )
    port: int = Field(8080, ge=0, le=65_535, description="TCP port; 0 picks a free one.")
    api_keys: list[str] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Keys a client must send as `Authorization: Bearer <key>` (compared in constant "
            "time); empty: no authentication. /health stays open."
        ),
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Browser origins allowed to call the API (CORS); empty: none, '*': any.",
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest request body; a larger one is refused with 413.",
    )
    max_queue: int = Field(
        8,
        ge=0,
        le=4096,
        description=(
            "Requests that may wait behind the one the model is generating; "
            "one more is refused with 429."
        ),
    )
    model_name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Model id the API reports and requests must name; None: the backend's.",
    )
    max_tokens: int = Field(
        2048,
        ge=1,
        le=1 << 20,
        description=(
            "Largest max_tokens a request may ask for (also capped by the model context); "
            "a request that leaves it out gets device.generation.max_tokens, at most this."
        ),
    )
    shutdown_timeout_s: int = Field(
        10,
        ge=1,
        le=3600,
        description="On shutdown, streams still running after this are cut off.",
    )
    advertise: bool = Field(
        False,
        description=(
            "Announce the endpoint on the LAN (`_edgecloud-dev._tcp`, mDNS) so apps on "
            "phones and desktops find this device (`edgecloud discover --devices`)."
        ),
    )
    advertise_interfaces: Interfaces | None = Field(
        None,
        description=(
            "IP addresses of the interfaces to announce on, or 'all'; None: the one `host` "
            "binds (every interface for 0.0.0.0)."
        ),
    )

    web_app_enabled: bool = Field(
        True,
        description=(
            "Serve a web app at / (a chat page for phones and desktops, installable as a PWA); "
            "its files never need a key, the API it calls does."
        ),
    )
    web_app: Path | None = Field(
        None,
        description=(
            "Directory of the static files served at / (index.html and the files beside it); "
            "None: the app shipped with edgecloud (edgecloud/http/web)."
        ),
    )

    _interfaces = field_validator("advertise_interfaces")(check_interfaces)


class DeviceConfig(Section):
    """Everything the device runtime needs."""

    model: LocalModelConfig = Field(default_factory=LocalModelConfig)
    generation: SamplingParams = Field(
        default_factory=SamplingParams, description="Defaults for each request."
    )
    cloud: DeviceCloudConfig = Field(default_factory=DeviceCloudConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    log: EscalationLogConfig = Field(default_factory=EscalationLogConfig)
    adapters: DeviceAdaptersConfig = Field(default_factory=DeviceAdaptersConfig)
    shadow: DeviceShadowConfig = Field(default_factory=DeviceShadowConfig)
    http: DeviceHttpConfig = Field(default_factory=DeviceHttpConfig)
    discovery: DeviceDiscoveryConfig = Field(default_factory=DeviceDiscoveryConfig)


class DeviceSettings(Protocol):
    """What device code reads of the root settings (:class:`edgecloud.config.Settings`)."""

    @property
    def device(self) -> DeviceConfig: ...

    @property
    def cache_dir(self) -> Path: ...
