"""Plain data passed between the layers of edgecloud.

Request-side types (:class:`SamplingParams`, :class:`ChatMessage`) are pydantic
models so a bad value fails at construction with a message naming the field.
Per-token output (:class:`Chunk`) is a slotted dataclass: it is built once per
generated token and must stay cheap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "BackendInfo",
    "ChatMessage",
    "Chunk",
    "Confidence",
    "Finish",
    "FinishReason",
    "GenerateOptions",
    "GenerationResult",
    "Passage",
    "Prompt",
    "ResultSource",
    "Retraction",
    "RouteInfo",
    "SamplingParams",
    "Source",
    "TensorSpec",
    "Timings",
    "ToolCall",
    "Usage",
    "json_object",
]

Source: TypeAlias = Literal["local", "cloud"]
"""Where a token was produced."""

ResultSource: TypeAlias = Literal["local", "cloud", "mixed"]
"""Where a whole answer came from; ``mixed`` when part is local and part cloud."""

FinishReason: TypeAlias = Literal["stop", "length", "cancelled"]
"""``stop``: end-of-sequence token or a stop sequence; ``length``: ``max_tokens``
or the context window was reached; ``cancelled``: the caller cancelled the stream."""

MAX_TOKENS_LIMIT = 1 << 20
MAX_TOP_LOGPROBS = 20
"""Most alternatives per token a request may ask for (``SamplingParams.top_logprobs``)."""
MAX_SCHEMA_NESTING = 64
"""Deepest JSON nesting (objects and arrays) a ``json_schema`` may have. Grammar compilers
take time that grows fast with depth (xgrammar: 14 s for a schema whose JSON nests 980 levels, on a
95-token vocabulary): a deeper schema is refused before it reaches one."""


class ChatMessage(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str = Field(description="What is said.")


Prompt: TypeAlias = str | Sequence[ChatMessage | Mapping[str, str]]
"""A raw completion prompt, or a list of chat messages (objects or dicts)."""


class GenerateOptions(TypedDict, total=False):
    """Per-request options of ``Client.stream`` / ``generate`` (and the async twins).

    Each one left out (or None) keeps the configured
    :class:`SamplingParams` default.
    """

    max_tokens: int | None
    """Most new tokens."""
    temperature: float | None
    """0 is greedy."""
    top_p: float | None
    """Nucleus sampling mass."""
    top_k: int | None
    """Keep the k most likely tokens; 0 keeps all."""
    seed: int | None
    """Sampling seed."""
    top_logprobs: int | None
    """Also report the k most likely tokens at each step (``Chunk.top``), 0 to 20."""
    stop: str | Sequence[str] | None
    """Stop sequence(s); the answer ends before the first one."""
    route: str | None
    """``"local"`` or ``"cloud"`` forces where the answer comes from; None lets the
    routing policies decide (needs cloud endpoints)."""
    show_unverified: bool | None
    """False: the app is shown no local text that a mid-answer hand-off could still take
    back; it comes once the local answer has finished without a hand-off, or once the
    cloud has verified it, so no chunk ever has ``retracted`` set. None keeps
    ``device.router.show_unverified``."""
    schema: Mapping[str, Any] | type[BaseModel] | None
    """Constrain the answer to JSON that follows this JSON schema (a dict) or pydantic
    model class: a grammar masks every token that would leave the schema, on the device
    and in the cloud, and the result's ``parsed`` holds the validated value (a model
    instance for a class). A schema the grammar compiler cannot handle is refused with
    :class:`~edgecloud.errors.InvalidRequestError` before any token; an answer cut short
    (``max_tokens``) raises :class:`~edgecloud.errors.StructuredOutputError` at its end.
    See docs/structured-output.md."""
    tools: Sequence[Mapping[str, Any]] | None
    """OpenAI-style tools (``{"type": "function", "function": {"name", "parameters"}}``):
    the answer is one call of one of them, JSON constrained to the union of their
    schemas, in ``result.tool_calls``. Not with ``schema``."""
    tool_choice: str | Mapping[str, Any] | None
    """``"auto"``/``"required"`` (the same here: a constrained answer always calls a
    tool), ``{"type": "function", "function": {"name": ...}}`` to force one, or
    ``"none"`` to answer in free text despite ``tools``."""
    speculative: int | None
    """Draft length k of edge-cloud speculative decoding for an answer the cloud gives
    from its start (``route="cloud"``, or a policy that sends the request there): the
    device drafts k tokens, the cloud checks them in one pass and adds one token, until
    the answer ends. The answer is the cloud's own greedy answer, from fewer cloud passes
    when the drafts agree; every chunk reads ``source="cloud"``. Needs temperature 0.
    0 turns it off; None keeps ``device.cloud.speculative_tokens``."""


def json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object.

    Raises:
        ValueError: it is not JSON, or not an object (the message names ``what``).
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    except RecursionError:  # a bomb of nested brackets: refused, not a crash of the caller
        raise ValueError(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    return value


def _nesting(value: Any) -> int:
    """How deep objects and arrays nest in a parsed JSON value (iterative: no recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is not None:
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in children)
    return deepest


class SamplingParams(BaseModel):
    """How to pick tokens and when to stop.

    ``temperature=0`` is greedy decoding. The confidence signals (log-probability,
    entropy) always describe the model's own distribution at temperature 1,
    whatever the sampling settings, so they are comparable across requests.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(
        256, ge=1, le=MAX_TOKENS_LIMIT, description="Most new tokens to generate."
    )
    temperature: float = Field(
        0.0, ge=0.0, le=5.0, description="Softmax temperature; 0 means greedy."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, le=1 << 20, description="Keep the k best tokens; 0 = all.")
    seed: int | None = Field(
        None, ge=0, lt=1 << 32, description="Sampling seed; None picks one at random."
    )
    stop: tuple[str, ...] = Field(
        (), max_length=16, description="Generation ends before any of these strings."
    )
    top_logprobs: int = Field(
        0,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description=(
            "Report the k most likely tokens of each step with their log-probabilities "
            "(Chunk.top); 0: none. Only the device model reports them; cloud tokens have none."
        ),
    )

    json_schema: str | None = Field(
        None,
        max_length=1 << 16,
        description=(
            "JSON schema (as JSON text) the answer must follow; a grammar masks every token "
            "that would leave it. None: free text. Usually set per request (the client's "
            "schema= option, the endpoint's response_format) rather than as a default."
        ),
    )

    @field_validator("json_schema")
    @classmethod
    def _schema_is_object(cls, value: str | None) -> str | None:
        if value is not None:
            depth = _nesting(json_object(value, "json_schema"))
            if depth > MAX_SCHEMA_NESTING:
                raise ValueError(
                    f"json_schema nests {depth} levels deep; at most {MAX_SCHEMA_NESTING} are "
                    "allowed"
                )
        return value

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value


@dataclass(frozen=True, slots=True)
class Chunk:
    """One generated token as the application sees it.

    ``text`` may be empty when a token holds only part of a multi-byte character;
    the bytes appear in the next chunk's text.
    """

    text: str
    token_id: int
    logprob: float
    """Natural-log probability of this token under the model's distribution."""
    entropy: float
    """Entropy (nats) of the next-token distribution this token was drawn from."""
    source: Source
    index: int
    """Position of the token in the answer, from 0."""
    retracted: int = 0
    """Characters to remove from the end of the answer shown so far before adding
    ``text``: the cloud rejected that part of the device's text when it took over."""
    piece: bytes = b""
    """The token's own bytes, as the model's vocabulary spells them (``text`` is what it
    adds to the answer: it lacks bytes of an unfinished character, and text held back
    while it may start a stop sequence). Empty where unknown (cloud tokens)."""
    top: tuple[tuple[str, float], ...] = ()
    """The ``SamplingParams.top_logprobs`` most likely tokens of this step (their text,
    undecodable bytes replaced, and natural-log probability), best first; empty when none
    were asked for, and for cloud tokens (the wire does not carry them)."""


@dataclass(frozen=True, slots=True)
class Retraction:
    """The cloud rejected the end of a hand-off's prefix (the device's text so far).

    ``kept`` characters of the prefix stand; ``rejected`` is the text after them that
    the cloud did not agree with. The chunks that follow continue after the kept text.
    """

    kept: int
    rejected: str
    kept_tokens: int = 0
    """Prefix tokens the cloud accepted (in its own tokenization)."""


@dataclass(frozen=True, slots=True)
class Passage:
    """A knowledge-base passage the cloud retrieved and put into the prompt."""

    text: str
    source: str
    score: float


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """Why an answer came from where it did."""

    policy: str
    """The policy that decided: ``forced``, ``privacy``, ``connectivity``, ``budget``,
    ``context``, ``learned``, ``confidence-window`` (mid-answer hand-off) or ``default``."""
    reason: str
    signals: Mapping[str, float | int | str | bool] = field(default_factory=dict)
    escalated: bool = False
    """Whether any part of the answer was asked of the cloud."""
    local_tokens_before_handoff: int = 0
    """Device tokens the answer keeps before the cloud's part."""
    endpoint: str | None = None
    fallback: str | None = None
    """Set when the cloud failed and the device finished the answer itself: why."""
    private: bool = False
    passages: tuple[Passage, ...] = ()
    """Knowledge passages the cloud grounded its part on."""
    rejected_local_tokens: int = 0
    """Device tokens of a hand-off that are not part of the answer: the cloud rejected
    them when it verified the device's text (or a blind hand-off dropped text the app
    had not been shown)."""
    retracted_chars: int = 0
    """Characters the app had been shown that the cloud rejected and the stream took
    back (``Chunk.retracted``)."""
    draft_tokens: int = 0
    """Speculative decoding: tokens the device drafted."""
    draft_accepted: int = 0
    """Speculative decoding: drafted tokens the cloud accepted."""
    cloud_passes: int = 0
    """Speculative decoding: verification rounds, each one cloud forward pass."""


@dataclass(frozen=True, slots=True)
class Finish:
    """End-of-stream marker a backend yields after its last :class:`Chunk`."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    passages: tuple[Passage, ...] = ()
    """Knowledge passages the answer was grounded on (cloud only)."""
    route: RouteInfo | None = None
    """Set by the hybrid engine: how the answer was routed."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool the model chose: its name and its arguments (a JSON object)."""

    name: str
    arguments: Mapping[str, Any]

    @property
    def arguments_json(self) -> str:
        """The arguments as JSON text (OpenAI's ``function.arguments``)."""
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Confidence:
    """Summary of the per-token signals of one answer.

    With no tokens generated every field is ``nan`` and ``tokens`` is 0.
    """

    mean_logprob: float
    min_logprob: float
    mean_entropy: float
    tokens: int

    @property
    def perplexity(self) -> float:
        """``exp(-mean_logprob)``: 1 is certain, larger is less sure."""
        return math.exp(-self.mean_logprob)


@dataclass(frozen=True, slots=True)
class Timings:
    """Wall-clock timings of one generation, in seconds."""

    time_to_first_token_s: float
    total_s: float
    decode_tokens_per_s: float
    """Tokens after the first, divided by the time after the first token."""


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A whole answer with its usage, confidence and provenance."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    confidence: Confidence
    source: ResultSource
    timings: Timings
    model: str
    route: RouteInfo | None = None
    """How the answer was routed (None for a purely local client)."""
    parsed: Any = None
    """With a ``schema``: the answer's JSON value, validated against it (an instance of
    the model class when the schema was a pydantic model). None without a schema."""
    tool_calls: tuple[ToolCall, ...] = ()
    """With ``tools``: the call the model made (one); empty otherwise."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a parsed model instance as its JSON-mode dump)."""
        out = asdict(self)
        if isinstance(self.parsed, BaseModel):
            out["parsed"] = self.parsed.model_dump(mode="json")
        return out


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a loaded backend is running."""

    kind: str
    model: str
    path: str
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, numpy dtype and shape of a graph input or output (``None`` = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
