"""The adapter manifest: what one signed adapter version is made of.

A manifest names the base model it was trained for (sha256 of the GGUF and its
architecture), the LoRA shape, the data it was trained on, its held-out metrics,
the canary prompts a device runs after swapping it in, optionally the scope of
requests it applies to, and every file of the version with its sha256 and size.
The signature covers :meth:`Manifest.to_json`,
the canonical JSON bytes (sorted keys, no whitespace); a device verifies those
exact bytes and only then parses them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgecloud.errors import AdapterFormatError, ConfigError

if TYPE_CHECKING:
    from edgecloud.router import LearnedRouter, WindowThresholds

__all__ = [
    "ADAPTER_ID_PATTERN",
    "DEVICE_FILE",
    "AdapterCalibration",
    "AdapterRouting",
    "AdapterScope",
    "AnswerMemory",
    "CanaryItem",
    "FileEntry",
    "Manifest",
    "TrainingData",
    "canonical_json",
    "check_adapter_id",
    "check_file_name",
    "first_error",
    "load_canary",
]

ADAPTER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ADAPTER_ID = re.compile(ADAPTER_ID_PATTERN)

DEVICE_FILE = "adapter.gguf"
"""The file of a version that devices download and run (a llama.cpp LoRA GGUF)."""

_MAX_FILE_NAME = 255
_SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def check_adapter_id(adapter_id: str) -> str:
    """``adapter_id`` if it is a valid adapter id (it becomes a path component).

    Raises:
        AdapterFormatError: not 1-64 characters of ``[A-Za-z0-9._-]`` starting alphanumeric.
    """
    if not isinstance(adapter_id, str) or not _ADAPTER_ID.match(adapter_id):
        raise AdapterFormatError(f"bad adapter id {str(adapter_id)[:80]!r}")
    return adapter_id


def check_file_name(name: str) -> str:
    """``name`` if it is a safe relative posix file name inside a version.

    Refuses what could escape the version's directory on any filesystem: absolute
    paths, ``..`` or ``.`` parts, backslashes, empty parts, NUL and control characters.

    Raises:
        AdapterFormatError: the name is unsafe.
    """
    bad = (
        not isinstance(name, str)
        or not name
        or len(name) > _MAX_FILE_NAME
        or name.startswith("/")
        or "\\" in name
        or any(ord(c) < 32 or c == "\x7f" for c in name)
        or ":" in name.split("/", 1)[0]  # a Windows drive or a URL scheme
        or any(part in ("", ".", "..") for part in name.split("/"))
    )
    if bad:
        raise AdapterFormatError(f"bad adapter file name {str(name)[:80]!r}")
    return name


def _without_prefix(text: str, prefix: str) -> str:
    """``text`` without ``prefix`` when it starts with it (the few-shot lines every
    trained prompt shared say nothing about a request)."""
    return text[len(prefix) :] if prefix and text.startswith(prefix) else text


class FileEntry(BaseModel):
    """The sha256 and size of one file of a version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: _SHA256 = Field(description="Lower-case hex sha256 of the file's bytes.")
    size: int = Field(ge=0, description="Size in bytes.")


class TrainingData(BaseModel):
    """What the adapter was trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    since: datetime | None = Field(None, description="Oldest record used.")
    until: datetime | None = Field(None, description="Newest record used.")
    records: int = Field(0, ge=0, description="Records considered.")
    train: int = Field(0, ge=0, description="Examples trained on.")
    holdout: int = Field(0, ge=0, description="Examples held out for the metrics.")
    with_passages: bool = Field(
        False, description="Whether the cloud's retrieved passages were in the training prompts."
    )


class CanaryItem(BaseModel):
    """One canary prompt: passes when the greedy answer contains ``expect`` (any case).

    ``prompt`` is raw text completed as is (no chat template), like the prompts
    of the escalation records the adapter was trained on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1, max_length=8192)
    expect: str = Field(min_length=1, max_length=1024)
    stop: tuple[str, ...] = Field(
        (), max_length=4, description="Stop sequences the answer ends at, as in the round."
    )
    escalate: bool | None = Field(
        None,
        description="Whether the version's calibrated router escalated this prompt when the "
        "round measured it as devices run it (None: not measured). A device whose own "
        "decision differs runs the adapter differently from the round's measurement.",
    )


class AdapterScope(BaseModel):
    """Which requests a version is for: a logistic head over the prompt's sentence embedding.

    The trainer fits it on the prompts the adapter learned an answer for (inside)
    against the device's replayed confident answers (what it already knew:
    outside). A device applies the adapter to a request only
    when :meth:`applies` says so and answers the rest with the base model, so an
    adapter trained on one domain leaves the device's other answers as they were.
    The head reads the device's sentence encoder (``encoder`` names it,
    ``weights`` has its dimension) on :meth:`text` of the prompt.

    Examples:
        >>> scope = manifest.scope                                          # doctest: +SKIP
        >>> scope.applies(encoder.encode([scope.text(prompt)])[0])          # doctest: +SKIP
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    encoder: str = Field(
        min_length=1, max_length=128, description="The sentence encoder the head reads."
    )
    strip_prefix: str = Field(
        "",
        max_length=65_536,
        description="Removed from a prompt that starts with it before embedding (the lines "
        "every training prompt shared, such as few-shot examples).",
    )
    weights: tuple[float, ...] = Field(
        min_length=1, max_length=8192, description="One weight per embedding dimension."
    )
    bias: float = Field(description="Intercept of the logistic head.")
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="In scope when the head's probability reaches this."
    )

    def text(self, prompt_text: str) -> str:
        """What to embed for ``prompt_text``: without :attr:`strip_prefix` when it starts so."""
        return _without_prefix(prompt_text, self.strip_prefix)

    def probability(self, embedding: Sequence[float]) -> float:
        """The head's probability that a request with this embedding is in scope.

        Raises:
            ValueError: the embedding's dimension is not the head's.
        """
        if len(embedding) != len(self.weights):
            raise ValueError(
                f"embedding has {len(embedding)} dimensions, the scope expects "
                f"{len(self.weights)} ({self.encoder})"
            )
        return float(self._head.predict(embedding))

    @functools.cached_property
    def _head(self) -> LearnedRouter:
        # The learned router's logistic head (numpy, loaded on first use).
        from edgecloud.router import LearnedRouter

        return LearnedRouter(self.weights, self.bias)

    def applies(self, embedding: Sequence[float]) -> bool:
        """Whether the adapter is for a request with this embedding."""
        return self.probability(embedding) >= self.threshold


class AnswerMemory(BaseModel):
    """What an adapter learned, in a form a device can check its answers against.

    One row per trained example: the sentence embedding of its prompt (without
    :attr:`strip_prefix`, like the scope) and the answer it was trained to give. An
    adapter that mixes up its facts answers one question with the figure it learned
    for another: the answer is in the memory, but not for the questions nearest to
    the one asked. :meth:`consistent` tells whether an answer is what the adapter
    learned for the nearest questions (within ``margin`` of the best similarity); a
    device escalates an answer that is not.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    encoder: str = Field(
        min_length=1, max_length=128, description="The sentence encoder of the vectors."
    )
    strip_prefix: str = Field(
        "", max_length=65_536, description="Removed from a prompt that starts with it."
    )
    dim: int = Field(ge=1, le=8192, description="Dimensions of one vector.")
    vectors: str = Field(
        max_length=64 << 20,
        description="Base64 of the unit vectors, float16 little-endian, one row per answer.",
    )
    answers: tuple[Annotated[str, Field(max_length=1024)], ...] = Field(
        min_length=1, max_length=65_536, description="The answer learned for each row."
    )
    margin: float = Field(
        0.05, ge=0, le=2, description="Rows this close to the best similarity count as nearest."
    )
    check_answers: bool = Field(
        True,
        description="Escalate an answer that is not what was learned for the nearest "
        "prompts (False: the memory only tells which requests the adapter is for).",
    )
    min_similarity: float = Field(
        -1.0,
        ge=-1,
        le=1,
        description="A request whose nearest trained prompt is less similar than this is "
        "nothing the adapter learned: the base model answers it.",
    )

    @field_validator("vectors")
    @classmethod
    def _base64(cls, value: str) -> str:
        import base64
        import binascii

        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("vectors must be base64") from None
        return value

    @model_validator(mode="after")
    def _shape(self) -> AnswerMemory:
        if self._matrix.shape != (len(self.answers), self.dim):
            raise ValueError(
                f"memory holds {self._matrix.size} numbers, not {len(self.answers)} x {self.dim}"
            )
        return self

    @classmethod
    def build(
        cls,
        encoder: str,
        strip_prefix: str,
        vectors: Any,
        answers: Sequence[str],
        margin: float,
        min_similarity: float = -1.0,
    ) -> AnswerMemory:
        """A memory of ``answers`` with their prompts' embeddings ``vectors`` (n x dim)."""
        import base64

        import numpy as np

        matrix = np.asarray(vectors, dtype="<f2")
        return cls(
            encoder=encoder, strip_prefix=strip_prefix, dim=int(matrix.shape[1]),
            vectors=base64.b64encode(matrix.tobytes()).decode(), answers=tuple(answers),
            margin=margin, min_similarity=min_similarity,
        )  # fmt: skip

    @functools.cached_property
    def _matrix(self) -> Any:
        import base64

        import numpy as np

        flat = np.frombuffer(base64.b64decode(self.vectors), dtype="<f2").astype(np.float32)
        if flat.size % self.dim:
            return flat.reshape(-1, 1)  # reported by model_post_init
        return flat.reshape(-1, self.dim)

    def text(self, prompt_text: str) -> str:
        """What to embed for ``prompt_text``: without :attr:`strip_prefix` when it starts so."""
        return _without_prefix(prompt_text, self.strip_prefix)

    def nearest(self, embedding: Sequence[float]) -> float:
        """The similarity of the trained prompt nearest to a request with this embedding.

        Raises:
            ValueError: the embedding's dimension is not the memory's.
        """
        return float(self._similarities(embedding).max())

    def learned(self, embedding: Sequence[float]) -> bool:
        """Whether a request this close to a trained prompt is one the adapter is for."""
        return self.nearest(embedding) >= self.min_similarity

    def _similarities(self, embedding: Sequence[float]) -> Any:
        import numpy as np

        if len(embedding) != self.dim:
            raise ValueError(f"embedding has {len(embedding)} dimensions, the memory {self.dim}")
        return self._matrix @ np.asarray(embedding, dtype=np.float32)

    def consistent(self, embedding: Sequence[float], answer: str) -> bool:
        """Whether ``answer`` is what was learned for the nearest prompts to the request
        with this ``embedding`` (see the class doc).

        Raises:
            ValueError: the embedding's dimension is not the memory's.
        """
        import numpy as np

        from edgecloud.common.text import same_answer

        sims = self._similarities(embedding)
        near = np.flatnonzero(sims >= sims.max() - self.margin)
        return any(same_answer(answer, self.answers[i]) for i in near)


class AdapterCalibration(BaseModel):
    """The device's escalation thresholds for the requests a version answers.

    A base model's thresholds do not fit the model an adapter makes of it: trained
    on a domain, it is confident there, rightly or not. The round measures the
    adapted model as devices run it (llama.cpp, the exported GGUF) on examples it did
    not train on, and fits the confidence window so that at most
    ``target_wrong_rate`` of them would be answered wrong with no escalation, with as
    few escalations as that allows. A device applies these thresholds to requests the
    adapter answers (in its scope) while the version runs; requests the base model
    answers keep the device's own ``device.router`` thresholds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    window: int = Field(ge=1, le=512, description="Tokens in the confidence window.")
    min_mean_logprob: float = Field(
        le=0, description="Hand off when the window's mean logprob falls below this."
    )
    max_mean_entropy: float | None = Field(
        None, gt=0, description="Hand off when the window's mean entropy exceeds this (None: off)."
    )
    min_tokens: int = Field(
        1, ge=1, le=4096, description="Local tokens before a hand-off may fire."
    )
    target_wrong_rate: float = Field(
        ge=0, le=1, description="Share of answers wrong with no escalation the fit allowed."
    )
    examples: int = Field(ge=0, description="Held-out examples the thresholds were fitted on.")
    memory: AnswerMemory | None = Field(
        None,
        description="Escalate an answer that is not what the adapter learned for the nearest "
        "prompts (None: the thresholds alone).",
    )
    measured: dict[str, float] = Field(
        default_factory=dict,
        description="What the round measured on its held-out examples: escalation and "
        "wrong-unescalated rates and accuracies, with the base model and with this version "
        "(see docs/learning-loop.md).",
    )

    def escalates(self, logprobs: Sequence[float], entropies: Sequence[float]) -> bool:
        """Whether these thresholds hand off an answer with these per-token signals at
        some point (the windows :class:`edgecloud.router.ConfidenceMonitor` sees)."""
        from edgecloud.router import window_extremes

        lo, hi = window_extremes(logprobs, entropies, self.window, self.min_tokens)
        limit = math.inf if self.max_mean_entropy is None else self.max_mean_entropy
        return lo < self.min_mean_logprob or hi > limit

    def thresholds(self, base: WindowThresholds) -> WindowThresholds:
        """``base`` (the device's own) with this calibration's window and thresholds."""
        return dataclasses.replace(
            base,
            window=self.window,
            min_mean_logprob=self.min_mean_logprob,
            max_mean_entropy=math.inf if self.max_mean_entropy is None else self.max_mean_entropy,
            min_tokens=self.min_tokens,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AdapterRouting:
    """What a device's engine applies with the version running: which requests the
    adapter answers and the thresholds they escalate at (None: every request; the
    device's own thresholds). ``version`` None: the base model runs."""

    version: int | None = None
    scope: AdapterScope | None = None
    calibration: AdapterCalibration | None = None


class Manifest(BaseModel):
    """One adapter version: base model, LoRA shape, data, metrics, canary, files.

    Examples:
        >>> m = Manifest.from_json(signed_bytes)                       # doctest: +SKIP
        >>> m.files["adapter.gguf"].sha256                             # doctest: +SKIP
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = 1
    adapter_id: str = Field(pattern=ADAPTER_ID_PATTERN, description="The adapter line.")
    version: int = Field(ge=1, lt=1 << 31, description="1, 2, ... within the adapter id.")
    base_model_sha256: _SHA256 = Field(description="sha256 of the base GGUF it was trained on.")
    base_architecture: str = Field(
        min_length=1, max_length=64, description="general.architecture of the base (gemma3)."
    )
    rank: int = Field(ge=1, le=4096, description="LoRA rank r.")
    alpha: float = Field(gt=0, description="LoRA alpha (the scale is alpha / r).")
    target_modules: tuple[str, ...] = Field(description="Module names the LoRA adapts.")
    data: TrainingData = Field(default_factory=TrainingData)
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Held-out metrics, e.g. accuracy before and after."
    )
    canary: tuple[CanaryItem, ...] = Field((), description="Prompts a device checks after a swap.")
    scope: AdapterScope | None = Field(
        None, description="The requests the adapter is for; None: every request."
    )
    calibration: AdapterCalibration | None = Field(
        None,
        description="Escalation thresholds for the requests the adapter answers; None: the "
        "device's own.",
    )
    created_at: datetime = Field(description="When the version was published (UTC).")
    files: dict[str, FileEntry] = Field(
        min_length=1, description="Relative posix file name -> sha256 and size."
    )

    @field_validator("files")
    @classmethod
    def _safe_names(cls, value: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in value:
            try:
                check_file_name(name)
            except AdapterFormatError as exc:
                raise ValueError(str(exc)) from None
        return value

    def to_json(self) -> bytes:
        """The canonical JSON bytes that are signed: sorted keys, no whitespace, UTF-8."""
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse manifest bytes.

        Raises:
            AdapterFormatError: not JSON, or not a valid manifest (including unsafe
                file names and unknown fields).
        """
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise AdapterFormatError(f"malformed adapter manifest: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """The first problem of a validation error as ``field.path: message``."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    where = ".".join(str(p) for p in errors[0]["loc"]) or "value"
    return f"{where}: {errors[0]['msg']}"


def canonical_json(value: Any) -> bytes:
    """``value`` as sorted-key, whitespace-free UTF-8 JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_canary(path: Path) -> list[CanaryItem]:
    """Canary prompts from a JSONL file of ``{"prompt": ..., "expect": ...}`` lines.

    Raises:
        ConfigError: unreadable, or a line is not such an object (the message names
            the file and line).
    """
    path = path.expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"canary file: cannot read {path}: {exc.strerror}") from exc
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(CanaryItem.model_validate_json(line))
        except ValidationError as exc:
            raise ConfigError(f"canary file {path}:{n} is not a canary item") from exc
    return items
