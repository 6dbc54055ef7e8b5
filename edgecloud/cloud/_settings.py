"""Settings of the cloud service (``[cloud]``).

Model, TLS, auth, knowledge, records, registry, training and the metrics port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, field_validator, model_validator

from edgecloud.common.settings import Section
from edgecloud.discovery._settings import CloudDiscoveryConfig
from edgecloud.transport._settings import AuthConfig, TlsConfig

__all__ = [
    "CloudAuthConfig",
    "CloudCalibrationConfig",
    "CloudConfig",
    "CloudKnowledgeConfig",
    "CloudMetricsConfig",
    "CloudModelConfig",
    "CloudRayConfig",
    "CloudRecordsConfig",
    "CloudRegistryConfig",
    "CloudSettings",
    "CloudTlsConfig",
    "CloudTrainConfig",
    "CloudUpstreamConfig",
]


CHUNK_CHARS = 60
"""``cloud.knowledge.chunk_chars``'s default (and :class:`KnowledgeBase`'s)."""

READING_FORMAT = (
    "Answer from the context.\n\n"
    "Context: The Zorblat 7 pump delivers up to 12 litres per minute.\n"
    "Q: Tell me the Zorblat 7's peak output.\nA: 12 litres per minute\n\n"
    "Context: The Quillon's warning lamp glows purple when its battery is low.\n"
    "Q: Name the colour of the Quillon's indicator.\nA: purple\n\n"
    "Context: Code E-19 means a jammed feeder gate.\n"
    "Q: Explain error E-19.\nA: a jammed feeder gate\n\n"
    "Context: {context}\n{tail}"
)
"""``cloud.model.prompt_format``'s default: three examples of reading a context, then the
request's last ``Q:`` line (and its ``A:`` cue) after its passages."""


class CloudModelConfig(Section):
    """The model the cloud service runs."""

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
        "auto",
        description=(
            "'auto' is bfloat16 on CUDA and on CPUs with native bfloat16 (AVX512-BF16, "
            "AMX), float32 on other CPUs."
        ),
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
    prompt_format: str = Field(
        READING_FORMAT,
        min_length=1,
        max_length=4096,
        description=(
            "How retrieved knowledge is put into a prompt: a template with {context} (the "
            "passages, one per line) and either {prompt} (the request's prompt or rendered "
            "chat) or {head} and {tail} (the prompt split before its last 'Q:' line, so the "
            "passages can sit right before the real question of a few-shot Q/A prompt). "
            "The default shows the model three short examples of answering from a context "
            "(invented facts, none of any user's domain) and then asks the request's last "
            "question with its passages: a small base model copies the figure it is given "
            "far more often that way than after the device's own few-shot lines."
        ),
    )

    @field_validator("prompt_format")
    @classmethod
    def _format_has_fields(cls, value: str) -> str:
        if "{context}" not in value:
            raise ValueError("must contain {context}")
        if "{prompt}" not in value and "{tail}" not in value:
            raise ValueError("must contain {prompt}, or {head} and {tail}")
        try:
            value.format(context="", prompt="", head="", tail="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"not a valid template ({exc}); write literal braces as {{{{ }}}}"
            ) from exc
        return value


class CloudTlsConfig(TlsConfig):
    """TLS for the cloud service; mTLS when `client_ca` is set."""


class CloudAuthConfig(AuthConfig):
    """Per-device bearer tokens, stored as sha256 hex digests (`edgecloud cloud hash-token`)."""

    adapters: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "device id -> adapter ids it may use; a device not listed may use all of them."
        ),
    )


class CloudKnowledgeConfig(Section):
    """Retrieval over the organization's documents, put into each prompt."""

    enabled: bool = Field(True, description="Use the knowledge base when `directory` is set.")
    directory: Path | None = Field(
        None, description="Documents (*.md, *.txt, searched recursively); None: no knowledge."
    )
    index_dir: Path | None = Field(
        None, description="Where the index is kept; None: <directory>/.edgecloud-index."
    )
    top_k: int = Field(1, ge=1, le=64, description="Passages put into each prompt, at most.")
    chunk_chars: int = Field(
        CHUNK_CHARS,
        ge=1,
        le=100_000,
        description=(
            "Sentences of a paragraph are joined into one passage up to this many "
            "characters (a longer sentence stays whole). The default keeps about one "
            "sentence, one fact, per passage: a small cloud model picks the right figure "
            "from one sentence far more often than from a paragraph of its neighbours."
        ),
    )
    min_score: float = Field(
        0.3, ge=-1.0, le=10.0, description="Passages scoring below this are left out."
    )


class CloudRecordsConfig(Section):
    """Where uploaded escalation records are stored (SQLite, WAL; or PostgreSQL)."""

    path: Path | None = Field(
        None, description="SQLite database; None: <cache_dir>/cloud/escalations.sqlite3."
    )
    url: str | None = Field(
        None,
        pattern=r"^postgres(ql)?://",
        description=(
            "A PostgreSQL URL (postgresql://user@host/db; needs edgecloud[postgres]) for "
            "services that share one store or run on machines without a durable disk; "
            "wins over `path`. None: SQLite at `path`."
        ),
    )
    max_record_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=64 << 20,
        description="Largest serialized record accepted; bigger ones fail the upload.",
    )
    max_records: int | None = Field(
        None,
        ge=1,
        description=(
            "Keep at most this many records; past it the oldest (by arrival) are deleted "
            "when a batch is stored. None: no cap."
        ),
    )
    max_age_days: float | None = Field(
        None,
        gt=0,
        description=(
            "Delete records that arrived more than this many days ago (checked when a "
            "batch is stored and at start). None: kept forever."
        ),
    )

    @property
    def max_age_s(self) -> float | None:
        """``max_age_days`` in seconds."""
        return None if self.max_age_days is None else self.max_age_days * 86_400


class CloudUpstreamConfig(Section):
    """An OpenAI-compatible server the service forwards generation to (``backend = "openai"``).

    vLLM, SGLang or llama_cpp.server streams ``/v1/completions`` with ``logprobs``; the
    service keeps what it does for every engine (limits, auth, knowledge, records,
    adapter sync). See docs/upstream.md.
    """

    url: str = Field(
        "http://127.0.0.1:8000/v1",
        pattern=r"^https?://",
        description="Base URL of the upstream's OpenAI API (ends in /v1).",
    )
    api_key: str | None = Field(
        None, description="Bearer token sent upstream; prefer `api_key_file`."
    )
    api_key_file: Path | None = Field(
        None, description="File holding the bearer token sent upstream (wins over `api_key`)."
    )
    model: str | None = Field(
        None,
        description="Upstream model name of the base model; None: the first /v1/models lists.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "adapter id -> upstream model name serving it (a LoRA module, e.g. vLLM's "
            "--lora-modules name=path); requests for other adapter ids fail as unknown."
        ),
    )
    logprobs: int = Field(
        5,
        ge=0,
        le=20,
        description=(
            "Top tokens asked for per step; the entropy is estimated from them (a lower "
            "bound). 0: no logprobs (chunks then carry logprob 0 and entropy 0)."
        ),
    )
    timeout_s: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="Connect timeout, and the longest wait for the next streamed token.",
    )
    max_connections: int = Field(
        64, ge=1, le=4096, description="Concurrent requests to the upstream, at most."
    )
    load_adapters: bool = Field(
        False,
        description=(
            "Load the registry's stable version of a requested adapter into the upstream "
            "at run time (vLLM's /v1/load_lora_adapter, named '<id>@<version>'), on the "
            "first request after a new version is promoted, and unload the previous one. "
            "Ids in `adapters` keep their static mapping. vLLM needs "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora."
        ),
    )
    lora_dir: Path | None = Field(
        None,
        description=(
            "Directory the stable versions' peft files are copied to and whose paths are "
            "sent as lora_path (`load_adapters`): the upstream must read it at the same "
            "path (a shared volume). None: <cache_dir>/cloud/adapters."
        ),
    )
    lora_api_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description=(
            "Base URL of load_lora_adapter/unload_lora_adapter (`load_adapters`); None: "
            "`url` (vLLM serves them under /v1; SGLang at its root, e.g. http://host:30000)."
        ),
    )


class CloudRayConfig(Section):
    """The torch engine as a Ray Serve deployment (``backend = "ray"``); see docs/ray.md.

    The gRPC service stays in this process; generation streams from replicas of the
    engine that Ray Serve starts, scales on ongoing requests, and replaces when they die.
    """

    address: str | None = Field(
        None,
        description=(
            "Ray cluster to join ('auto', 'ray://host:10001'); None starts a local one bound "
            "to 127.0.0.1 (no dashboard, no usage stats)."
        ),
    )
    num_cpus: int | None = Field(
        None, ge=1, le=4096, description="CPUs of the local cluster; None: all of this machine."
    )
    replicas: int = Field(1, ge=1, le=1024, description="Replicas of the engine, at least.")
    max_replicas: int = Field(
        1, ge=1, le=1024, description="Replicas at most; autoscaling adds them under load."
    )
    target_ongoing_requests: float = Field(
        8.0,
        gt=0.0,
        le=100_000.0,
        description="Streams per replica the autoscaler aims at (Ray Serve's metric).",
    )
    upscale_delay_s: float = Field(
        30.0,
        ge=0.0,
        le=3600.0,
        description="How long the load must call for more replicas before Ray adds them.",
    )
    downscale_delay_s: float = Field(
        600.0,
        ge=0.0,
        le=86_400.0,
        description="How long the load must allow fewer replicas before Ray removes some.",
    )
    replica_cpus: float = Field(
        1.0, gt=0.0, le=1024.0, description="CPUs Ray reserves for each replica."
    )
    replica_gpus: float = Field(
        0.0, ge=0.0, le=64.0, description="GPUs Ray reserves for each replica."
    )
    max_adapters_per_replica: int = Field(
        4,
        ge=1,
        le=1024,
        description=(
            "Adapter versions a replica keeps loaded (Ray Serve model multiplexing); the "
            "least recently used is unloaded beyond it."
        ),
    )
    app_name: str = Field(
        "edgecloud", min_length=1, description="Ray Serve application name of the engine."
    )
    deploy: bool = Field(
        True,
        description=(
            "Deploy the engine application from this process; false: attach to the running "
            "application `app_name` (declared in a RayService's serveConfigV2)."
        ),
    )
    train_cpus: float = Field(
        1.0,
        gt=0.0,
        le=1024.0,
        description="CPUs reserved for `edgecloud cloud train --ray` (a Ray task of its own).",
    )

    @model_validator(mode="after")
    def _max_at_least_min(self) -> CloudRayConfig:
        if self.max_replicas < self.replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})"
            )
        return self


class CloudRegistryConfig(Section):
    """Where signed adapter versions are stored and how they are signed."""

    url: str | None = Field(
        None,
        description=(
            "A local directory or any fsspec URL (s3://bucket/prefix, ...); "
            "None: <cache_dir>/registry."
        ),
    )
    signing_key: Path | None = Field(
        None,
        description=(
            "Ed25519 private key (PEM) that signs published manifests; "
            "`edgecloud adapters keygen` makes one."
        ),
    )
    chunk_bytes: int = Field(
        256 * 1024, ge=1024, le=16 << 20, description="Bytes per FetchAdapter chunk."
    )


class CloudMetricsConfig(Section):
    """The Prometheus metrics port of the cloud service (``/metrics``, plain HTTP)."""

    enabled: bool = Field(
        False, description="Serve the metrics (`edgecloud_*`) over HTTP beside the gRPC port."
    )
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address of the metrics port; loopback unless a scraper elsewhere needs it.",
    )
    port: int = Field(9464, ge=0, le=65535, description="Metrics port; 0 picks a free one.")


class CloudCalibrationConfig(Section):
    """How a round fits the escalation thresholds it ships (``[cloud.train.calibration]``).

    The round answers its held-out examples as devices will (llama.cpp, the base GGUF,
    with and without the exported adapter), fits the thresholds for the requests the
    adapter answers, and refuses the version when device-plus-cloud would be less
    accurate than before on the domain or on the general examples.
    """

    enabled: bool = Field(
        True,
        description=(
            "Measure the adapter as devices run it and sign fitted escalation thresholds "
            "into the version (needs llama-cpp-python in the cloud). Off: devices keep "
            "their own thresholds for the adapter's answers."
        ),
    )
    target_wrong_rate: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description=(
            "Share of held-out answers allowed to be wrong with no escalation; the fit "
            "escalates as little as this allows."
        ),
    )
    windows: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8],
        min_length=1,
        description="Confidence windows (tokens) the fit tries.",
    )
    min_examples: int = Field(
        4,
        ge=1,
        description="Held-out answers by the adapter needed to fit thresholds; fewer: none.",
    )
    memory: bool = Field(
        True,
        description=(
            "Also sign an answer memory into the version (the trained prompts' embeddings and "
            "answers): devices escalate an answer that is not what the adapter learned for "
            "the nearest prompts, a fact mixed up with another. Kept only when it does not "
            "cost more escalations on the held-out examples than the thresholds alone."
        ),
    )
    memory_margin: float = Field(
        0.05, ge=0, le=2, description="Trained prompts this close to the nearest one count too."
    )
    refuse_regression: bool = Field(
        True,
        description=(
            "Do not publish a version with which device-plus-cloud answers fewer held-out "
            "examples right than before, on the domain (escalated records) or the general "
            "ones (replayed records); the cloud's answers are the reference."
        ),
    )
    device_window: int = Field(
        8, ge=1, le=512, description="The devices' device.router.window (for the base model)."
    )
    device_min_mean_logprob: float = Field(
        -1.5, le=0, description="The devices' device.router.min_mean_logprob."
    )
    device_min_tokens: int = Field(
        4, ge=1, le=4096, description="The devices' device.router.min_tokens."
    )


class CloudTrainConfig(Section):
    """LoRA training of adapters from escalation records (`edgecloud cloud train`)."""

    adapter_id: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The adapter line a round publishes a new version of.",
    )
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0.0, le=4096.0, description="LoRA alpha (scale = alpha/r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
        ],
        min_length=1,
        description=(
            "Module names that get LoRA (attention and MLP projections; the tied "
            "embedding is left out)."
        ),
    )  # fmt: skip
    epochs: int = Field(10, ge=1, le=1000, description="Passes over the training records.")
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0, description="AdamW learning rate.")
    batch_size: int = Field(8, ge=1, le=4096, description="Examples per optimizer step.")
    max_length: int = Field(
        256, ge=16, le=32_768, description="Tokens per example; longer ones are cut."
    )
    holdout_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description=(
            "Records kept out of training to evaluate on and to fit the version's "
            "escalation thresholds with (cloud.train.calibration)."
        ),
    )
    include_passages: bool = Field(
        False,
        description=(
            "Also train on the knowledge passages the cloud retrieved for each record "
            "(as plain text, loss on all of it)."
        ),
    )
    require_grounded: bool = Field(
        True,
        description=(
            "Train only on answers whose numbers and words all occur in the passages the "
            "cloud retrieved for them (records without passages are always kept)."
        ),
    )
    relabel_all: bool = Field(
        True,
        description=(
            "Relabel every escalated record, not only those failing require_grounded: "
            "its label becomes the answer most of relabel_samples samples agree on "
            "(self-consistency; grounded in its passages, or shared by "
            "relabel_min_share of them when it had none), or it is left out."
        ),
    )
    relabel_samples: int = Field(
        16,
        ge=0,
        le=64,
        description=(
            "Answers sampled from the cloud model with a record's passages when relabeling; "
            "a label needs two samples to agree on it. 0 turns relabeling off (records that "
            "fail require_grounded are then left out)."
        ),
    )
    relabel_temperature: float = Field(
        0.7, gt=0.0, le=2.0, description="Sampling temperature of relabeling."
    )
    relabel_min_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description=(
            "For records the cloud answered without passages (nothing to ground them in): "
            "the share of relabel_samples that must agree on an answer to keep it."
        ),
    )
    check_replay: bool = Field(
        True,
        description=(
            "Look each replayed local answer up in the cloud's knowledge base "
            "(cloud.knowledge): one the passages found for it do not support is a "
            "confident wrong answer, relabeled by the vote like an escalation instead "
            "of replayed as it was."
        ),
    )
    replay_loss: Literal["kl", "label"] = Field(
        "label",
        description=(
            "How replayed local answers (device.log.replay_rate) train: 'kl' keeps the "
            "adapted model's whole next-token distribution on them close to the base "
            "model's (one more forward, without the adapter); 'label' trains on their "
            "tokens like any answer."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description=(
            "Precision of the frozen base weights while relabeling and training (the LoRA "
            "weights stay float32). 'auto' is bfloat16 on CUDA and on CPUs with native "
            "bfloat16, float32 elsewhere."
        ),
    )
    strip_common_prefix: bool = Field(
        True,
        description=(
            "Train without the lines every prompt shares (few-shot examples, a system "
            "prompt): they say nothing about any one record and, on a small model, make "
            "most of each step's cost."
        ),
    )
    synthesize: bool = Field(
        True,
        description=(
            "Also learn from the knowledge base: the cloud model writes new questions from "
            "the passages the round's escalations touched, answers them by the relabeling "
            "vote with the passages retrieved for each, and keeps a question only when "
            "retrieval ranks its source passage first, the question tells that passage from "
            "other documents' ones, and the agreed answer is grounded in the source sentence "
            "the question is about. Needs a knowledge base (cloud.knowledge); the greenhouse "
            "domain's held-out phrasings answered locally and right rose from 66.7% to 87.5% "
            "with it, on the same records (bench/learning_loop.py)."
        ),
    )
    synthesize_per_passage: int = Field(
        4,
        ge=1,
        le=64,
        description="Candidate questions sampled from each passage when synthesizing.",
    )
    synthesize_budget_s: float = Field(
        180.0,
        gt=0.0,
        le=86_400.0,
        description=(
            "Seconds synthesis may take in a round; it stops at the next passage or "
            "question after that and keeps what it has."
        ),
    )
    scope: bool = Field(
        True,
        description=(
            "Fit the adapter's scope (which requests it is for) on the round's records: a "
            "logistic head over sentence embeddings of the prompts it learned an answer for "
            "(inside) against the replayed ones (outside), signed into the manifest. Needs "
            "replay records (device.log.replay_rate) and the sentence encoder; without "
            "them, no scope."
        ),
    )
    scope_inside: Literal["grounded", "learned"] = Field(
        "grounded",
        description=(
            "Which learned prompts the scope holds. grounded: those whose answer the "
            "knowledge passages retrieved for them support (what the organization's data "
            "taught the adapter; general questions the cloud answered from its own "
            "weights stay with the base model and the device's thresholds), or every "
            "learned prompt when none is grounded. learned: every prompt the adapter "
            "learned an answer for (use it when the cloud model knows much more than the "
            "device's, beyond its knowledge base)."
        ),
    )
    scope_threshold: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="A request is in scope when the head's probability reaches this.",
    )
    calibration: CloudCalibrationConfig = Field(default_factory=CloudCalibrationConfig)
    seed: int = Field(0, ge=0, description="Seed for the split, initialization and shuffling.")
    threads: int | None = Field(
        None, ge=1, le=512, description="torch CPU threads; None keeps torch's default."
    )
    min_records: int = Field(
        1, ge=1, description="A round with fewer usable records publishes nothing."
    )


class CloudConfig(Section):
    """The cloud inference service (`edgecloud cloud serve`)."""

    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    insecure: bool = Field(
        False,
        description="Serve plain text without TLS; allowed only on a loopback host.",
    )
    model: CloudModelConfig = Field(default_factory=CloudModelConfig)
    tls: CloudTlsConfig = Field(default_factory=CloudTlsConfig)
    auth: CloudAuthConfig = Field(default_factory=CloudAuthConfig)
    knowledge: CloudKnowledgeConfig = Field(default_factory=CloudKnowledgeConfig)
    records: CloudRecordsConfig = Field(default_factory=CloudRecordsConfig)
    registry: CloudRegistryConfig = Field(default_factory=CloudRegistryConfig)
    train: CloudTrainConfig = Field(default_factory=CloudTrainConfig)
    metrics: CloudMetricsConfig = Field(default_factory=CloudMetricsConfig)
    discovery: CloudDiscoveryConfig = Field(default_factory=CloudDiscoveryConfig)
    backend: Literal["torch", "openai", "ray"] = Field(
        "torch",
        description=(
            "'torch' runs `model` in this process; 'openai' forwards to the "
            "OpenAI-compatible server of `upstream`; 'ray' runs `model` as the Ray Serve "
            "deployment of `ray`."
        ),
    )
    upstream: CloudUpstreamConfig = Field(default_factory=CloudUpstreamConfig)
    ray: CloudRayConfig = Field(default_factory=CloudRayConfig)
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
        15.0,
        ge=0.0,
        le=1000.0,
        description=(
            "When idle, wait at most this long after the first request so that requests "
            "arriving together are prefilled in one batch; 0 prefills at once."
        ),
    )
    admission_gap_ms: float = Field(
        5.0,
        ge=0.0,
        le=1000.0,
        description=(
            "The admission wait ends sooner once no request has arrived for this long "
            "(a lone request waits this, not the whole window)."
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


class CloudSettings(Protocol):
    """What cloud code reads of the root settings (:class:`edgecloud.config.Settings`)."""

    @property
    def cloud(self) -> CloudConfig: ...

    @property
    def cache_dir(self) -> Path: ...
