"""A cloud backend that forwards to an OpenAI-compatible server (vLLM, SGLang, llama_cpp.server).

The service (limits, auth, knowledge retrieval, records, adapter sync) stays as it is;
only the engine moves to a server built for batching on GPUs. Each ``Generate`` is one
streaming ``/v1/completions`` call (Server-Sent Events) with ``logprobs=k``:

- ``logprob`` of a chunk is the upstream's log-probability of the token it chose.
- ``entropy`` is *estimated* from the top ``k`` tokens: ``-sum(p_i log p_i)`` over them
  plus ``-r log r`` for the mass ``r`` left to the rest of the vocabulary. That is a
  lower bound of the true entropy (the tail is taken as one token), tight when the top
  ``k`` hold nearly all the mass, as on the confident steps devices care about. With
  ``cloud.upstream.logprobs = 0``, or an upstream that sends none, chunks carry
  logprob 0 and entropy 0: the device sees a fully confident cloud.
- Token ids are not part of the Completions API: chunks carry ``token_id = 0`` (a
  model token, not a flush; ``-1`` stays reserved for text-only chunks).
- The prompt is rendered as :class:`~edgecloud.cloud.TorchBackend` renders it (plain
  chat template, passages by ``cloud.model.prompt_format``) and ``assistant_prefix`` is
  appended to it as text: the upstream tokenizes prompt and prefix together, so a token
  across the seam may differ from the one the device's answer had.
- ``verify_prefix`` is judged greedily without prompt logprobs (which ``echo`` gives on
  some servers only): a first call decodes greedily from the prompt and stops where its
  text leaves the prefix; what matched stands, a :class:`~edgecloud.types.Retraction`
  gives back the rest, and a second call continues after the kept text. Unlike the torch
  backend, a token with ``temperature > 0`` stands only as the greedy choice (the
  ``min(1, p/q)`` rule needs ``p`` of every prefix token), so more may be rejected.
- ``adapter_id`` selects an upstream model name (``cloud.upstream.adapters``: vLLM's
  ``--lora-modules name=path`` serves a LoRA under ``name``). With
  ``cloud.upstream.load_adapters``, other ids are served from the registry instead: the
  stable version's peft files are loaded into the upstream at run time (vLLM's
  ``load_lora_adapter``) as ``"<id>@<version>"``, see :class:`RuntimeLoras`.

A failure upstream (refused connection, an HTTP error, a stream that breaks or stalls
past ``cloud.upstream.timeout_s``) raises :class:`~edgecloud.errors.CloudError`; the
service ends the call with ``INTERNAL`` and the device sees a
:class:`~edgecloud.errors.RemoteError` at once, never a hang.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.cloud._backend import BackendInfo, CloudRequest, LoadSnapshot
from edgecloud.cloud._prompting import request_text
from edgecloud.cloud._settings import CloudConfig, CloudUpstreamConfig
from edgecloud.cloud._versions import (
    adapter_model_id,
    adapters_dir,
    peft_dir,
    stable_adapters,
    stable_version,
)
from edgecloud.errors import (
    CloudError,
    CloudModelLoadError,
    ConfigError,
    InvalidRequestError,
    OverloadedError,
    TransportError,
    UnknownAdapterError,
)
from edgecloud.types import Chunk, Finish, FinishReason, Retraction, SamplingParams

if TYPE_CHECKING:
    import httpx

    from edgecloud.adapters._registry import AdapterRegistry

__all__ = ["RuntimeLoras", "UpstreamBackend", "entropy_lower_bound"]

log = logging.getLogger("edgecloud.cloud")

_FINISH: Mapping[str, FinishReason] = {"stop": "stop", "length": "length", "eos": "stop"}


def entropy_lower_bound(top_logprobs: Mapping[str, float] | None) -> float:
    """Entropy (nats) of a next-token distribution known by its top tokens only.

    ``-sum(p log p)`` over the known tokens plus ``-r log r`` for the remaining mass
    ``r``: the least the rest of the vocabulary can add (all of it on one token), so
    the result never exceeds the true entropy. 0 when nothing is known.
    """
    if not top_logprobs:
        return 0.0
    probs = [math.exp(lp) for lp in top_logprobs.values() if lp > -math.inf]
    known = sum(probs)
    h = -sum(p * math.log(p) for p in probs if p > 0)
    rest = 1.0 - known
    if rest > 1e-9:
        h -= rest * math.log(rest)
    return max(h, 0.0)


@dataclass(frozen=True, slots=True)
class _Piece:
    """One token (or text-only delta) of an upstream stream."""

    text: str
    logprob: float | None
    top: Mapping[str, float] | None


@dataclass(slots=True)
class _End:
    reason: FinishReason
    prompt_tokens: int


def api_key(cfg: CloudUpstreamConfig) -> str | None:
    """The bearer token of ``cloud.upstream`` (``api_key_file`` first).

    Raises:
        ConfigError: the key file cannot be read.
    """
    if cfg.api_key_file is not None:
        try:
            return cfg.api_key_file.expanduser().read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cloud.upstream.api_key_file: {exc}") from exc
    return cfg.api_key


class UpstreamBackend:
    """A :class:`~edgecloud.cloud.CloudBackend` that streams from an OpenAI-compatible server.

    Build it with :meth:`connect`, which checks that the upstream answers and finds its
    model. The HTTP client is made on the first request, on the loop that serves it.
    """

    def __init__(
        self,
        config: CloudConfig,
        *,
        model: str,
        key: str | None = None,
        registry: AdapterRegistry | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        """Serve ``model`` of the upstream in ``config.upstream``, sending ``key``.

        Args:
            config: the cloud settings (``upstream`` names the server).
            model: the upstream's name of the base model.
            key: the bearer token sent upstream.
            registry: where ``cloud.upstream.load_adapters`` finds adapter versions.
            cache_dir: their peft copies go to ``<cache_dir>/cloud/adapters`` unless
                ``cloud.upstream.lora_dir`` is set.

        Raises:
            ConfigError: ``load_adapters`` without a registry.
        """
        self._config = config
        self._cfg = config.upstream
        self._model = model
        self._key = key
        self._client: httpx.AsyncClient | None = None
        self._running = 0
        self.loras: RuntimeLoras | None = None
        if self._cfg.load_adapters:
            if registry is None:
                raise ConfigError("cloud.upstream.load_adapters needs the adapter registry")
            from edgecloud.common.settings import default_cache_dir

            root = self._cfg.lora_dir or adapters_dir(cache_dir or default_cache_dir())
            self.loras = RuntimeLoras(self._cfg, registry, root.expanduser(), self._http)
        self._info = BackendInfo(
            backend="openai",
            model=model,
            adapters=tuple(self._cfg.adapters),
            device=_redacted(self._cfg.url),
            dtype="unknown",
        )

    @property
    def info(self) -> BackendInfo:
        """The upstream's model, and the adapters served: the static mapping's ids, and
        with ``load_adapters`` those the registry has a stable version of."""
        if self.loras is None:
            return self._info
        found = self.loras.servable()
        return dataclasses.replace(
            self._info, adapters=tuple(sorted({*found, *self._cfg.adapters}))
        )

    @classmethod
    def connect(
        cls,
        config: CloudConfig,
        *,
        registry: AdapterRegistry | None = None,
        cache_dir: Path | None = None,
    ) -> UpstreamBackend:
        """Ask the upstream for its models (``GET /models``); take ``cloud.upstream.model``
        or the first one listed. ``registry`` and ``cache_dir``: see :meth:`__init__`.

        Raises:
            CloudModelLoadError: the upstream is unreachable, refuses, or lists no model.
            ConfigError: the API key file cannot be read.
        """
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx is in the cloud extra
            raise CloudModelLoadError(
                "the openai backend needs httpx: pip install 'edgecloud[upstream]'"
            ) from exc
        cfg = config.upstream
        key = api_key(cfg)
        url = cfg.url.rstrip("/") + "/models"
        try:
            resp = httpx.get(url, headers=_headers(key), timeout=cfg.timeout_s)
            resp.raise_for_status()
            listed = [str(m["id"]) for m in resp.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise CloudModelLoadError(
                f"cloud.upstream: cannot list models at {_redacted(url)}: {exc}"
            ) from exc
        model = cfg.model
        if model is None:
            if not listed:
                raise CloudModelLoadError(f"cloud.upstream: {_redacted(url)} lists no model")
            model = listed[0]
        elif listed and model not in listed:
            log.warning("cloud.upstream.model %r is not among %s's models %s", model,
                        _redacted(url), listed)  # fmt: skip
        return cls(config, model=model, key=key, registry=registry, cache_dir=cache_dir)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            limits = httpx.Limits(
                max_connections=self._cfg.max_connections,
                max_keepalive_connections=self._cfg.max_connections,
            )
            self._client = httpx.AsyncClient(
                base_url=self._cfg.url.rstrip("/") + "/",
                headers=_headers(self._key),
                limits=limits,
                timeout=httpx.Timeout(self._cfg.timeout_s),
            )
        return self._client

    def load_snapshot(self) -> LoadSnapshot:
        """Requests streaming from the upstream now (its own queue is not visible here)."""
        running = min(self._running, self._cfg.max_connections)
        return LoadSnapshot(
            running=running,
            queued=self._running - running,
            max_running=self._cfg.max_connections,
            max_queued=self._config.max_queued_requests,
        )

    def prompt_text(self, request: CloudRequest) -> str:
        """The prompt before the assistant prefix, as :class:`TorchBackend` renders it."""
        return request_text(self._config.model.prompt_format, request)

    def _model_for(self, adapter_id: str | None) -> str:
        if not adapter_id:
            return self._model
        if self.loras is not None and adapter_id not in self._cfg.adapters:
            return ""  # loaded at run time, once the request has its place
        try:
            return self._cfg.adapters[adapter_id]
        except KeyError:
            raise UnknownAdapterError(f"adapter {adapter_id!r} is not served") from None

    async def generate(
        self, request: CloudRequest
    ) -> AsyncGenerator[Chunk | Finish | Retraction, None]:
        """Stream chunks, then one :class:`Finish` (see :meth:`CloudBackend.generate`).

        Raises:
            UnknownAdapterError: ``adapter_id`` has no upstream model, or (runtime
                loading) no stable version, or the upstream refused to load it.
            OverloadedError: ``max_connections`` plus ``max_queued_requests`` are busy.
            InvalidRequestError: the upstream refused the request (a prompt too long).
            TransportError: the upstream failed (5xx) loading the adapter (retryable).
            CloudError: the upstream failed, broke the stream or stalled.
        """
        model = self._model_for(request.adapter_id)
        if self._running >= self._cfg.max_connections + self._config.max_queued_requests:
            raise OverloadedError("the upstream's connections and the queue are full")
        self._running += 1
        lora = ""
        try:
            if not model and request.adapter_id and self.loras is not None:
                model = lora = await self.loras.acquire(request.adapter_id)
            prompt = self.prompt_text(request)
            prefix = request.assistant_prefix
            if request.verify_prefix and prefix:
                kept, kept_tokens = await self._verify(model, prompt, request)
                if kept < len(prefix):
                    yield Retraction(kept, prefix[kept:], kept_tokens)
                    prefix = prefix[:kept]
            body = self._body(model, prompt + prefix, request.params)
            index = 0
            async with aclosing(self._events(body, request.deadline)) as events:
                async for event in events:
                    if isinstance(event, _End):
                        yield Finish(event.reason, event.prompt_tokens, index)
                        return
                    k = request.params.top_logprobs
                    top = sorted((event.top or {}).items(), key=lambda kv: -kv[1])[:k] if k else []
                    yield Chunk(
                        event.text,
                        0,
                        0.0 if event.logprob is None else event.logprob,
                        entropy_lower_bound(event.top),
                        "cloud",
                        index,
                        top=tuple(top),
                    )
                    index += 1
        finally:
            self._running -= 1
            if lora and self.loras is not None:
                self.loras.release(lora)

    async def _verify(self, model: str, prompt: str, request: CloudRequest) -> tuple[int, int]:
        """Decode greedily after ``prompt`` while the text matches the prefix.

        Returns:
            Characters of the prefix that stand, and the upstream tokens they took.
        """
        prefix = request.assistant_prefix
        # A token spells at least one character: len(prefix) tokens always cover it.
        budget = len(request.prefix_logprobs) + 1 if request.prefix_logprobs else len(prefix)
        budget = min(budget, self._config.max_context_tokens)
        params = SamplingParams(max_tokens=max(budget, 1), temperature=0.0)
        body = self._body(model, prompt, params, logprobs=0)
        text, tokens = "", 0
        async with aclosing(self._events(body, request.deadline)) as events:
            async for event in events:
                if isinstance(event, _End):
                    break
                grown = text + event.text
                if prefix.startswith(grown):
                    text, tokens = grown, tokens + 1
                    if len(text) == len(prefix):
                        break
                elif grown.startswith(prefix):  # the model's token runs past the prefix's end
                    return len(prefix), tokens + 1
                else:
                    break
        return len(text), tokens

    def _body(
        self, model: str, prompt: str, params: SamplingParams, *, logprobs: int | None = None
    ) -> dict[str, Any]:
        k = max(self._cfg.logprobs, params.top_logprobs) if logprobs is None else logprobs
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if k:
            body["logprobs"] = k
        if params.top_k:
            body["top_k"] = params.top_k  # vLLM, SGLang and llama.cpp take it
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def _events(
        self, body: dict[str, Any], deadline: float | None
    ) -> AsyncGenerator[_Piece | _End, None]:
        """The pieces of one streaming completion, then its :class:`_End`.

        Raises:
            InvalidRequestError, UnknownAdapterError, OverloadedError, CloudError: see
                :meth:`generate`.
        """
        import httpx

        timeout = self._cfg.timeout_s
        if deadline is not None:
            timeout = max(min(timeout, deadline - time.monotonic()), 0.001)
        reason: FinishReason | None = None
        prompt_tokens = 0
        try:
            async with self._http().stream(
                "POST", "completions", json=body, timeout=timeout
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise _status_error(resp.status_code, resp.text, body["model"])
                async for line in resp.aiter_lines():
                    if deadline is not None and time.monotonic() > deadline:
                        yield _End("cancelled", prompt_tokens)
                        return
                    data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
                    if not data:
                        continue
                    if data == "[DONE]":
                        break
                    pieces, finished, usage = _parse_event(data)
                    prompt_tokens = usage or prompt_tokens
                    reason = finished or reason
                    for piece in pieces:
                        yield piece
        except httpx.TimeoutException as exc:
            if deadline is not None and time.monotonic() >= deadline:
                yield _End("cancelled", prompt_tokens)
                return
            raise CloudError(f"upstream timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise CloudError(f"upstream failed: {type(exc).__name__}: {exc}") from exc
        if reason is None:
            raise CloudError("upstream stream ended without a finish reason")
        yield _End(reason, prompt_tokens)

    def close(self) -> None:
        """Forget the HTTP client; its connections close with the loop that made them."""
        self._client = None

    async def aclose(self) -> None:
        """Close the HTTP client's connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class RuntimeLoras:
    """The registry's adapter versions, loaded into the upstream at run time.

    ``cloud.upstream.load_adapters``: the first request for an adapter after a new stable
    version appears copies that version's peft files out of the registry and asks the
    upstream to load them (``POST load_lora_adapter``, ``{"lora_name", "lora_path"}``)
    as ``"<id>@<version>"``; the request, and those after it, then name that LoRA as their
    ``model``. One load per adapter at a time: requests that arrive meanwhile wait for it
    instead of loading again. The previous version is unloaded (``POST
    unload_lora_adapter``) once no request streams from it any more, so answers already
    under way finish on the weights they started with.

    A name the upstream says it already has (a restart of this service) counts as loaded.
    """

    def __init__(
        self,
        cfg: CloudUpstreamConfig,
        registry: AdapterRegistry,
        root: Path,
        http: Callable[[], httpx.AsyncClient],
    ) -> None:
        self._registry = registry
        self._root = root
        self._http = http
        self._base = (cfg.lora_api_url or cfg.url).rstrip("/") + "/"
        self._current: dict[str, str] = {}  # adapter id -> name of its loaded stable version
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: collections.Counter[str] = collections.Counter()
        self._retired: set[str] = set()  # replaced names, unloaded when their last user ends
        self._unloading: set[asyncio.Task[None]] = set()
        self._servable: list[str] = []
        self._servable_at = float("-inf")

    def servable(self) -> list[str]:
        """Adapter ids the registry has a stable version of (read at most every 2 s)."""
        now = time.monotonic()
        if now - self._servable_at > 2.0:
            self._servable, self._servable_at = stable_adapters(self._registry), now
        return self._servable

    def loaded(self) -> dict[str, str]:
        """adapter id -> the upstream LoRA name of the version loaded for it."""
        return dict(self._current)

    async def _stable_name(self, adapter_id: str) -> tuple[str, int]:
        version = await asyncio.to_thread(stable_version, self._registry, adapter_id)
        return adapter_model_id(adapter_id, version), version

    async def acquire(self, adapter_id: str) -> str:
        """The upstream LoRA name serving ``adapter_id`` now, loaded first if needed; the
        caller streams from it and then calls :meth:`release` with it.

        Raises:
            UnknownAdapterError: no stable version, no peft files, or the upstream
                refused to load them (among them: it cannot read their path).
            TransportError: the upstream failed (5xx) while loading.
            CloudError: the upstream could not be reached, or lacks the endpoint.
        """
        name, _ = await self._stable_name(adapter_id)
        if self._current.get(adapter_id) != name:
            async with self._locks.setdefault(adapter_id, asyncio.Lock()):
                # Read again: the load this request waited for may have been a newer one.
                name, version = await self._stable_name(adapter_id)
                previous = self._current.get(adapter_id)
                if previous != name:
                    path = await asyncio.to_thread(
                        peft_dir, self._registry, adapter_id, version, self._root
                    )
                    await self._load(adapter_id, version, name, path)
                    self._current[adapter_id] = name
                    self._retired.discard(name)
                    if previous is not None:
                        self._retired.add(previous)
                        if not self._users[previous]:
                            await self._unload(previous)
        self._users[name] += 1
        return name

    def release(self, name: str) -> None:
        """A request that :meth:`acquire` gave ``name`` is done with it."""
        self._users[name] -= 1
        if self._users[name] > 0 or name not in self._retired:
            return
        del self._users[name]
        try:
            task = asyncio.get_running_loop().create_task(self._unload(name))
        except RuntimeError:  # no loop: the service is stopping, the upstream keeps it
            return
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    async def _load(self, adapter_id: str, version: int, name: str, path: Path) -> None:
        import httpx

        what = f"adapter {adapter_id!r} version {version}"
        url = self._base + "load_lora_adapter"
        try:
            resp = await self._http().post(url, json={"lora_name": name, "lora_path": str(path)})
        except httpx.HTTPError as exc:
            raise CloudError(
                f"upstream failed to load {what}: {type(exc).__name__}: {exc}"
            ) from exc
        if resp.status_code == 200:
            log.warning("upstream loaded %s as %r from %s", what, name, path)
            return
        message = _message_text(resp.text)
        if resp.status_code in (400, 409) and "already" in message.lower():
            log.info("upstream already has %r: %s", name, message)
            return
        log.warning("upstream refused to load %s from %s: HTTP %d: %s", what, path,
                    resp.status_code, message)  # fmt: skip
        if resp.status_code in (404, 405) and message.strip().lower() in (
            "not found",
            "method not allowed",
        ):
            raise CloudError(
                f"the upstream has no {_redacted(url)} (vLLM: set "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; else cloud.upstream.lora_api_url)"
            )
        if resp.status_code == 404:
            raise UnknownAdapterError(
                f"{what}: the upstream cannot read its LoRA files at {path} ({message}); "
                "cloud.upstream.lora_dir must be a path the upstream reads"
            )
        if resp.status_code >= 500:
            raise TransportError(f"{what}: the upstream failed to load it (HTTP "
                                 f"{resp.status_code}: {message})")  # fmt: skip
        raise UnknownAdapterError(
            f"{what}: the upstream refused to load it as {name!r} (HTTP {resp.status_code}: "
            f"{message})"
        )

    async def _unload(self, name: str) -> None:
        """Unload ``name``; a failure is logged only (the upstream keeps a spare LoRA)."""
        import httpx

        self._retired.discard(name)
        try:
            resp = await self._http().post(
                self._base + "unload_lora_adapter", json={"lora_name": name}
            )
        except httpx.HTTPError as exc:
            log.warning("upstream could not unload %r: %s: %s", name, type(exc).__name__, exc)
            return
        if resp.status_code == 200:
            log.warning("upstream unloaded %r", name)
        else:
            log.warning("upstream refused to unload %r: HTTP %d: %s", name, resp.status_code,
                        _message_text(resp.text))  # fmt: skip


def _parse_event(data: str) -> tuple[list[_Piece], FinishReason | None, int]:
    """One SSE ``data:`` payload: its pieces, its finish reason (if it ends the stream)
    and the prompt tokens its ``usage`` reports (0: none).

    Raises:
        CloudError: the upstream reported an error, or sent something malformed.
    """
    try:
        obj = json.loads(data)
        if "error" in obj:
            raise CloudError(f"upstream failed mid-stream: {_message(obj)}")
        usage = obj.get("usage") or {}
        pieces: list[_Piece] = []
        reason: FinishReason | None = None
        for choice in obj.get("choices") or ():
            pieces.extend(_pieces(choice))
            if choice.get("finish_reason"):
                reason = _FINISH.get(choice["finish_reason"], "stop")
        return pieces, reason, int(usage.get("prompt_tokens") or 0)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CloudError(f"upstream sent a malformed event: {exc}") from exc


def _pieces(choice: Mapping[str, Any]) -> list[_Piece]:
    """The tokens of one streamed choice: one per entry of ``logprobs.tokens`` (the text
    goes with them when they spell it, else all of it on the last), or the text alone."""
    text = str(choice.get("text") or "")
    lp = choice.get("logprobs") or {}
    tokens = lp.get("tokens") or []
    if not tokens:
        return [_Piece(text, None, None)] if text else []
    logprobs = lp.get("token_logprobs") or [None] * len(tokens)
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    spelled = "".join(str(t) for t in tokens) == text
    out = []
    for i, (tok, logprob, top) in enumerate(zip(tokens, logprobs, tops, strict=False)):
        piece_text = str(tok) if spelled else (text if i == len(tokens) - 1 else "")
        out.append(_Piece(piece_text, None if logprob is None else float(logprob), top))
    return out


def _status_error(status: int, text: str, model: str) -> Exception:
    message = _message_text(text)
    if status in (400, 413, 422):
        return InvalidRequestError(f"upstream refused the request: {message}")
    if status == 404:
        return UnknownAdapterError(f"upstream model {model!r} not found: {message}")
    if status in (429, 503):
        return OverloadedError(f"upstream is overloaded ({status})")
    return CloudError(f"upstream answered HTTP {status}: {message}")


def _message_text(text: str) -> str:
    try:
        return _message(json.loads(text))
    except ValueError:
        return text[:300]


def _message(obj: Any) -> str:
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:300]
    return str(err)[:300]


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _redacted(url: str) -> str:
    """``url`` without user info (a password in it stays out of logs and service info)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))
