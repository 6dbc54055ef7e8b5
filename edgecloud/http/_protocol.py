"""The OpenAI wire format, without a web framework: requests in, response objects out.

Requests are checked strictly, the way OpenAI's own API checks them: a field that is
neither one this server honours nor a known OpenAI field it can honour by ignoring (at
its default value) is refused with a 400 that names it, so a client never silently gets
something other than what it asked for. Responses are plain dicts, built chunk by chunk
from the SDK's :class:`~edgecloud.types.Chunk` objects, with the ``edgecloud``
extension field (where the tokens ran, how the answer was routed, retractions).

Structured output: ``response_format`` (``json_schema`` or ``json_object``) and
``tools`` become the SDK's ``schema`` option, so a grammar keeps the answer on the
schema (docs/structured-output.md). A tool call is the JSON
``{"name": ..., "arguments": {...}}`` constrained to the union of the tools'
schemas, returned in OpenAI's ``tool_calls`` shape.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgecloud.common.structured import JSON_OBJECT_SCHEMA, tool_call_schema
from edgecloud.device._settings import MAX_DRAFT_TOKENS
from edgecloud.errors import (
    BackendClosedError,
    ContextOverflowError,
    EdgeCloudError,
    InvalidRequestError,
    OverloadedError,
    TransportError,
)
from edgecloud.types import MAX_TOP_LOGPROBS, ChatMessage, Chunk, GenerationResult

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "EdgeCloudOptions",
    "HttpError",
    "ResponseBuilder",
    "error_from",
    "parse_request",
    "sse",
]

Kind = Literal["chat", "completion"]

NEG_INF_LOGPROB = -9999.0
"""What OpenAI reports for a log-probability too small to represent (JSON has no -inf)."""

SEED_MODULUS = 1 << 32
"""OpenAI seeds are any integer; the device's sampler takes 32 bits."""


class HttpError(Exception):
    """An error response in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def error_from(exc: EdgeCloudError, *, prompt_param: str = "messages") -> HttpError:
    """The HTTP status and OpenAI error an SDK error becomes (never a traceback);
    ``prompt_param`` names the prompt field in a context overflow."""
    if isinstance(exc, ContextOverflowError):
        return HttpError(400, str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return HttpError(400, str(exc))
    if isinstance(exc, OverloadedError):
        return HttpError(503, f"the cloud is overloaded: {exc}", type="server_error",
                         code="overloaded")  # fmt: skip
    if isinstance(exc, TransportError):
        return HttpError(503, f"the cloud is unavailable: {exc}", type="server_error",
                         code="cloud_unavailable")  # fmt: skip
    if isinstance(exc, BackendClosedError):
        return HttpError(503, "the server is shutting down", type="server_error",
                         code="shutting_down")  # fmt: skip
    return HttpError(500, f"{type(exc).__name__}: {exc}", type="server_error")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class EdgeCloudOptions(_Strict):
    """The ``edgecloud`` request extension (with the openai client: ``extra_body``)."""

    route: Literal["local", "cloud"] | None = Field(
        None, description="Force where the answer comes from; None lets the policies decide."
    )
    show_unverified: bool = Field(
        False,
        description=(
            "Stream local text a mid-answer hand-off may still take back; such chunks then "
            "carry edgecloud.retracted. False: nothing shown is ever taken back."
        ),
    )
    speculative: int | None = Field(
        None, ge=0, le=MAX_DRAFT_TOKENS, description="Draft length of speculative decoding."
    )
    top_k: int | None = Field(None, ge=0, le=1 << 20, description="Keep the k best tokens.")


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None
    """Accepted and ignored: this server never pads chunks."""


class _JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    """Accepted either way: the answer always follows the schema (a grammar enforces it)."""


class ResponseFormat(_Strict):
    """``response_format``: text, any JSON object, or JSON that follows a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchemaFormat | None = None

    def output_schema(self) -> Mapping[str, Any] | None:
        """The schema the answer must follow; None for free text."""
        if self.type == "json_schema":
            if self.json_schema is None:
                raise HttpError(400, "response_format of type json_schema needs json_schema",
                                param="response_format.json_schema")  # fmt: skip
            return self.json_schema.schema_ or JSON_OBJECT_SCHEMA
        return JSON_OBJECT_SCHEMA if self.type == "json_object" else None


class _Function(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _Tool(_Strict):
    type: Literal["function"]
    function: _Function


class _FunctionName(_Strict):
    name: str


class _ToolChoice(_Strict):
    type: Literal["function"]
    function: _FunctionName


class _Request(_Strict):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    edgecloud: EdgeCloudOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        return value

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def output_schema(self) -> Mapping[str, Any] | None:
        """The JSON schema the answer must follow (``response_format``); None: free text."""
        return self.response_format.output_schema() if self.response_format is not None else None

    def structured(self) -> dict[str, Any]:
        """The SDK options for a structured answer (``schema``, ``tools``, ``tool_choice``)."""
        return {"schema": self.output_schema()}


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class _CalledFunction(_Strict):
    name: str
    arguments: str


class _ToolCallIn(_Strict):
    id: str
    type: Literal["function"]
    function: _CalledFunction


class _Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None
    tool_calls: list[_ToolCallIn] | None = None
    """An earlier assistant turn's tool calls (sent back with the tools' results)."""
    tool_call_id: str | None = None

    def to_chat(self) -> ChatMessage:
        text = (
            self.content
            if isinstance(self.content, str)
            else "\n".join(p.text for p in self.content or ())
        )
        if self.role == "tool":
            # The chat templates have no tool role: the result reads as the user's turn.
            return ChatMessage(role="user", content=f"Tool result ({self.tool_call_id}): {text}")
        if self.role == "assistant" and self.tool_calls:
            # The call as the model wrote it, so the conversation reads as it happened.
            calls = [
                f'{{"name": {json.dumps(c.function.name)}, "arguments": {c.function.arguments}}}'
                for c in self.tool_calls
            ]
            text = "\n".join([text, *calls]) if text else "\n".join(calls)
        # OpenAI's newer name for the system role; the chat templates know "system".
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=text)


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | _ToolChoice | None = None

    def calls_tools(self) -> bool:
        """Whether the answer is a tool call (tools listed, and ``tool_choice`` not none)."""
        return bool(self.tools) and self.tool_choice != "none"

    def structured(self) -> dict[str, Any]:
        """``response_format``'s schema, or the tools (checked here, so that a refusal
        names its field): the SDK makes the answer one call of one of them
        (``tool_choice`` ``auto`` answers with a call too: under a grammar the model
        cannot choose prose instead; ``none`` leaves the tools out)."""
        if not self.calls_tools():
            if self.tool_choice not in (None, "none", "auto"):
                raise HttpError(400, "tool_choice needs tools", param="tool_choice")
            return super().structured()
        if self.output_schema() is not None:
            raise HttpError(400, "give tools or response_format, not both",
                            param="response_format")  # fmt: skip
        tools = [t.model_dump(exclude_none=True) for t in self.tools or ()]
        choice = self.tool_choice
        choice_value = choice.model_dump() if isinstance(choice, _ToolChoice) else choice
        try:
            tool_call_schema(tools, choice_value)
        except InvalidRequestError as exc:
            raise HttpError(400, str(exc), param="tool_choice") from None
        return {"tools": tools, "tool_choice": choice_value}

    def new_tokens(self) -> int | None:
        a, b = self.max_tokens, self.max_completion_tokens
        if a is not None and b is not None and a != b:
            raise HttpError(400, f"max_tokens ({a}) and max_completion_tokens ({b}) differ: "
                            "give one", param="max_completion_tokens")  # fmt: skip
        return b if b is not None else a

    def alternatives(self) -> int | None:
        """How many alternatives per token to report; None: no logprobs at all."""
        if self.top_logprobs is not None and not self.logprobs:
            raise HttpError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Request):
    """``POST /v1/completions`` (the legacy completion API)."""

    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise HttpError(400, "one prompt per request: send a string, or a list of one",
                            param="prompt")  # fmt: skip
        return self.prompt[0]

    def alternatives(self) -> int | None:
        return self.logprobs


_ANY = object()
"""Any value is accepted (a field that only informs the provider, such as ``user``)."""

# Known OpenAI fields that this server honours by ignoring them, as long as they hold
# their default: (allowed values or _ANY, what a non-default value asks for).
_AT_DEFAULT_COMMON: dict[str, tuple[Any, str]] = {
    "n": ((1, None), "n>1 (several choices per request) is not supported: send n=1"),
    "frequency_penalty": ((0, None), "frequency_penalty is not supported (only 0)"),
    "presence_penalty": ((0, None), "presence_penalty is not supported (only 0)"),
    "logit_bias": ((None, {}), "logit_bias is not supported"),
    "user": (_ANY, ""),
    "metadata": (_ANY, ""),
    "service_tier": ((None, "auto", "default"), "service_tier is not supported"),
    "store": ((None, False), "store is not supported (only false)"),
}
_AT_DEFAULT: dict[Kind, dict[str, tuple[Any, str]]] = {
    "chat": {
        **_AT_DEFAULT_COMMON,
        "parallel_tool_calls": (_ANY, ""),
        "functions": ((None, []), "functions (function calling) are not supported"),
        "function_call": ((None, "none", "auto"), "function_call: there are no functions"),
        "modalities": ((None, ["text"]), "modalities: only text"),
        "audio": ((None,), "audio output is not supported"),
        "prediction": ((None,), "predicted outputs are not supported"),
        "reasoning_effort": ((None,), "reasoning_effort is not supported"),
        "web_search_options": ((None,), "web search is not supported"),
        "prompt_cache_key": (_ANY, ""),
        "safety_identifier": (_ANY, ""),
    },
    "completion": {
        **_AT_DEFAULT_COMMON,
        "echo": ((None, False), "echo is not supported (only false)"),
        "suffix": ((None, ""), "suffix (insertion) is not supported"),
        "best_of": ((None, 1), "best_of>1 is not supported: send best_of=1"),
    },
}
_MODELS: dict[Kind, type[ChatRequest | CompletionRequest]] = {
    "chat": ChatRequest,
    "completion": CompletionRequest,
}


def _is_default(value: Any, allowed: Any) -> bool:
    if allowed is _ANY:
        return True
    # bool is an int in Python: true is not the n=1 or penalty 0 a client meant.
    return any(value == a and type(value) is type(a) for a in allowed) or (
        isinstance(value, float) and value.is_integer() and int(value) in allowed
    )


def parse_request(kind: Kind, body: bytes) -> ChatRequest | CompletionRequest:
    """Parse and check a request body.

    Raises:
        HttpError: 400, naming the offending field, for a body that is not a JSON
            object, an unknown field, a value out of range or a feature not served.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, "the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the request body must be a JSON object")
    for name, (allowed, why) in _AT_DEFAULT[kind].items():
        if name in data:
            value = data.pop(name)
            if not _is_default(value, allowed):
                raise HttpError(400, why, param=name, code="unsupported_parameter")
    try:
        return _MODELS[kind].model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _validation_error(exc: ValidationError) -> HttpError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    # A union reports each branch (``messages.0.content.str``): name the field itself.
    while loc and loc[-1] in {"str", "list[str]", "list[_TextPart]", "int", "float", "bool"}:
        loc.pop()
    param = ".".join(loc) or None
    if err["type"] == "extra_forbidden":
        return HttpError(400, f"Unrecognized request argument supplied: {param}", param=param,
                         code="unknown_parameter")  # fmt: skip
    if err["type"] == "missing":
        return HttpError(
            400, f"{param} is required", param=param, code="missing_required_parameter"
        )
    shown = repr(err.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return HttpError(400, f"{param}: {err['msg']} (got {shown}){more}", param=param,
                     code="invalid_value")  # fmt: skip


def generate_options(
    request: ChatRequest | CompletionRequest, *, max_tokens: int, cap: int
) -> dict[str, Any]:
    """The :class:`~edgecloud.types.GenerateOptions` a request asks for.

    ``max_tokens`` is what a request that leaves it out gets; ``cap`` the most it may
    ask for (``device.http.max_tokens``, or the model context if smaller).
    """
    asked = request.new_tokens()
    if asked is not None and asked > cap:
        param = "max_tokens" if request.max_tokens is not None else "max_completion_tokens"
        raise HttpError(400, f"{param}={asked} is more than this server allows ({cap}: "
                        "device.http.max_tokens or the model context)", param=param,
                        code="invalid_value")  # fmt: skip
    ext = request.edgecloud or EdgeCloudOptions()
    options: dict[str, Any] = {
        "max_tokens": asked if asked is not None else min(max_tokens, cap),
        "stop": request.stop or None,
        "route": ext.route,
        "show_unverified": ext.show_unverified,
        "speculative": ext.speculative,
        "top_k": ext.top_k,
        "top_logprobs": request.alternatives() or None,
        **request.structured(),
    }
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p == 0.0:
        options["temperature"] = 0.0  # only the most likely token is left: greedy
    elif request.top_p is not None:
        options["top_p"] = request.top_p
    if request.seed is not None:
        options["seed"] = request.seed % SEED_MODULUS
    return options


def sse(obj: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False,
                                                       separators=(",", ":"))  # fmt: skip
    return f"data: {data}\n\n".encode()


def _finite(x: float) -> float:
    return x if math.isfinite(x) else NEG_INF_LOGPROB


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _token(c: Chunk) -> tuple[str, bytes]:
    """A token's text and bytes for logprobs: its own piece where the backend gave it
    (a part of a character reads U+FFFD, its bytes stay exact), else its text."""
    if c.piece:
        return c.piece.decode("utf-8", "replace"), c.piece
    return c.text, c.text.encode()


def _usage(result: GenerationResult) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def _finish_reason(result: GenerationResult, tools: bool = False) -> str:
    # "cancelled" has no OpenAI name; only the server cancels (at shutdown).
    if result.finish_reason == "length":
        return "length"
    return "tool_calls" if tools and result.tool_calls else "stop"


def answer_extension(result: GenerationResult) -> dict[str, Any]:
    """The ``edgecloud`` field of a whole answer: where it ran, why, and how sure."""
    c, t = result.confidence, result.timings
    out: dict[str, Any] = _json_safe(
        {
            "source": result.source,
            "route": asdict(result.route) if result.route is not None else None,
            "finish": result.finish_reason,
            "confidence": {
                "mean_logprob": c.mean_logprob,
                "min_logprob": c.min_logprob,
                "mean_entropy": c.mean_entropy,
                "tokens": c.tokens,
            },
            "timings": {
                "time_to_first_token_s": t.time_to_first_token_s,
                "total_s": t.total_s,
                "decode_tokens_per_s": t.decode_tokens_per_s,
            },
        }
    )
    return out


class ResponseBuilder:
    """Builds one request's response objects, streamed or whole (see module doc).

    Args:
        kind: chat or legacy completion.
        model: the model id to report.
        logprobs: alternatives per token to report; None: no logprobs.
        include_usage: streaming: end with a chunk that carries the usage.
        tools: the answer is a tool call: it is sent whole, as ``tool_calls``, once it
            has ended (a stream sends no content deltas before it).
    """

    def __init__(
        self,
        kind: Kind,
        model: str,
        *,
        logprobs: int | None,
        include_usage: bool = False,
        tools: bool = False,
    ) -> None:
        self.kind = kind
        self.tools = tools
        self.model = model
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self._offset = 0  # where the next token starts in the tokens' text (legacy logprobs)

    def _envelope(self, choices: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
        if self.kind == "chat":
            obj = "chat.completion.chunk" if stream else "chat.completion"
        else:
            obj = "text_completion"
        out: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if stream and self.include_usage:
            out["usage"] = None
        return out

    def _chat_logprob(self, c: Chunk) -> dict[str, Any]:
        token, raw = _token(c)
        return {
            "token": token,
            "logprob": _finite(c.logprob),
            "bytes": list(raw),
            "top_logprobs": [
                {"token": t, "logprob": _finite(lp), "bytes": list(t.encode())}
                for t, lp in c.top[: self.logprobs]
            ],
        }

    def _completion_logprobs(self, chunks: Iterable[Chunk]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {
            "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []
        }  # fmt: skip
        for c in chunks:
            if c.token_id < 0:
                continue
            token = _token(c)[0]
            out["tokens"].append(token)
            out["token_logprobs"].append(_finite(c.logprob))
            out["top_logprobs"].append({t: _finite(lp) for t, lp in c.top[: self.logprobs]})
            out["text_offset"].append(self._offset)
            self._offset += len(token)
        return out

    def _tool_calls(self, result: GenerationResult, *, streamed: bool) -> list[dict[str, Any]]:
        """The answer's tool call in OpenAI's shape; empty when it was cut short."""
        if not result.tool_calls:
            return []
        call = result.tool_calls[0]
        entry: dict[str, Any] = {
            "id": "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments_json},
        }
        return [{"index": 0, **entry} if streamed else entry]

    def head(self) -> list[dict[str, Any]]:
        """The chunks that open a stream (chat: the assistant role)."""
        if self.kind != "chat":
            return []
        delta = {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return [self._envelope([choice], True)]

    def chunk(self, c: Chunk) -> dict[str, Any] | None:
        """The stream chunk for one SDK chunk; None when it carries nothing to send."""
        token = self.logprobs is not None and c.token_id >= 0
        if self.tools or (not c.text and not c.retracted and not token):
            return None
        self._offset -= min(c.retracted, self._offset)  # the tokens taken back lose their place
        if self.kind == "chat":
            logprobs = {"content": [self._chat_logprob(c)], "refusal": None} if token else None
            choice: dict[str, Any] = {"index": 0, "delta": {"content": c.text}}
        else:
            logprobs = self._completion_logprobs([c]) if token else None
            choice = {"index": 0, "text": c.text}
        choice.update(logprobs=logprobs, finish_reason=None)
        out = self._envelope([choice], True)
        out["edgecloud"] = {"source": c.source, "retracted": c.retracted}
        return out

    def tail(self, result: GenerationResult) -> list[dict[str, Any]]:
        """The chunks that close a stream: the finish reason with the routing extension,
        then the usage when asked for."""
        out: list[dict[str, Any]] = []
        if self.tools:  # the call (or, cut short, the text) in one delta
            calls = self._tool_calls(result, streamed=True)
            delta = {"tool_calls": calls} if calls else {"content": result.text}
            first = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            out.append(self._envelope([first], True))
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": {}}
        else:
            choice = {"index": 0, "text": ""}
        choice.update(logprobs=None, finish_reason=_finish_reason(result, self.tools))
        last = self._envelope([choice], True)
        last["edgecloud"] = answer_extension(result)
        out.append(last)
        if self.include_usage:
            usage = self._envelope([], True)
            usage["usage"] = _usage(result)
            out.append(usage)
        return out

    def whole(self, chunks: Sequence[Chunk], result: GenerationResult) -> dict[str, Any]:
        """The non-streaming response; ``chunks`` are the answer's, retractions applied."""
        logprobs: dict[str, Any] | None = None
        if self.kind == "chat":
            if self.logprobs is not None:
                entries = [self._chat_logprob(c) for c in chunks if c.token_id >= 0]
                logprobs = {"content": entries, "refusal": None}
            message: dict[str, Any] = {"role": "assistant", "content": result.text,
                                       "refusal": None}  # fmt: skip
            calls = self._tool_calls(result, streamed=False) if self.tools else None
            if calls:
                message.update(content=None, tool_calls=calls)
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            if self.logprobs is not None:
                logprobs = self._completion_logprobs(chunks)
            choice = {"index": 0, "text": result.text}
        choice.update(logprobs=logprobs, finish_reason=_finish_reason(result, self.tools))
        out = self._envelope([choice], False)
        out["usage"] = _usage(result)
        out["edgecloud"] = answer_extension(result)
        return out
