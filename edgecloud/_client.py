"""The public facade: :class:`Client` and :class:`AsyncClient` over one pure base."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError
from typing_extensions import Self, Unpack

from edgecloud.common.aio import DONE, LoopThread, iterate_async, pump_events
from edgecloud.common.lifecycle import AsyncClosing, Closing
from edgecloud.common.settings import format_validation_error
from edgecloud.common.structured import OutputSchema, parse_tool_call, request_schema
from edgecloud.common.text import normalize_prompt
from edgecloud.config import Settings
from edgecloud.device._answer import Transcript
from edgecloud.device._settings import MAX_DRAFT_TOKENS
from edgecloud.errors import InvalidRequestError, StreamNotFinishedError, StructuredOutputError
from edgecloud.types import (
    Chunk,
    Confidence,
    Finish,
    GenerateOptions,
    GenerationResult,
    Prompt,
    ResultSource,
    SamplingParams,
    Timings,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from edgecloud.backends import TextBackend
    from edgecloud.common.models import ProgressCallback
    from edgecloud.device._hybrid import CancelScope, HybridEngine

__all__ = ["AsyncClient", "AsyncStream", "Client", "Stream"]

_ROUTING_OPTIONS = frozenset(
    {"route", "show_unverified", "speculative", "schema", "tools", "tool_choice"}
)
"""Options for the hybrid engine (and ``schema``/``tools``, which become
``SamplingParams.json_schema``); the rest override sampling parameters."""


class ResultBuilder:
    """Folds a stream of chunks into a :class:`GenerationResult` (pure; the caller
    passes the clock readings).

    A chunk's ``retracted`` characters are taken off the answer before its text is
    added; the confidence and sources describe the tokens that remain. With a
    ``schema``, the finished answer is parsed and validated against it.
    """

    def __init__(self, model: str, started: float, schema: OutputSchema | None = None) -> None:
        self._model = model
        self._schema = schema
        self.schema_error: StructuredOutputError | None = None
        """Set by :meth:`finish` when the answer does not follow the schema."""
        self._started = started
        self._first: float | None = None
        self._last = started
        self._answer = Transcript()

    def add(self, chunk: Chunk, now: float) -> None:
        self._answer.add(chunk)
        if chunk.token_id < 0:  # text flushed at the end, or only a retraction: not a token
            return
        if self._first is None:
            self._first = now
        self._last = now

    def finish(self, end: Finish, now: float) -> GenerationResult:
        """The result of the finished stream. With a schema, ``parsed`` is the validated
        value, or None and :attr:`schema_error` set when the answer is not one (cut by
        ``max_tokens``, most likely): ``generate`` raises that error, a stream's
        consumer reads ``finish_reason`` (as OpenAI's API does)."""
        parsed = None
        calls: tuple[ToolCall, ...] = ()
        if self._schema is not None:
            try:
                parsed = self._schema.parse(self._answer.text)
                if self._schema.tools:
                    calls = (parse_tool_call(parsed),)
            except StructuredOutputError as exc:
                self.schema_error = exc
        tokens = [c for c in self._answer.chunks if c.token_id >= 0]
        n = len(tokens)
        nan = math.nan
        confidence = Confidence(
            mean_logprob=math.fsum(c.logprob for c in tokens) / n if n else nan,
            min_logprob=min(c.logprob for c in tokens) if n else nan,
            mean_entropy=math.fsum(c.entropy for c in tokens) / n if n else nan,
            tokens=n,
        )
        first = self._first if self._first is not None else now
        decode_time = self._last - first
        timings = Timings(
            time_to_first_token_s=first - self._started,
            total_s=now - self._started,
            decode_tokens_per_s=(n - 1) / decode_time if n > 1 and decode_time > 0 else nan,
        )
        sources = {c.source for c in tokens}
        source: ResultSource = (
            "mixed" if len(sources) > 1 else "cloud" if sources == {"cloud"} else "local"
        )
        return GenerationResult(
            text=self._answer.text,
            finish_reason=end.reason,
            usage=Usage(end.prompt_tokens, end.completion_tokens),
            confidence=confidence,
            source=source,
            timings=timings,
            model=self._model,
            route=end.route,
            parsed=parsed,
            tool_calls=calls,
        )


class _Cancel(Protocol):
    def set(self) -> None: ...


class _BaseClient:
    """Request building shared by the sync and async clients."""

    def __init__(
        self,
        backend: TextBackend,
        *,
        defaults: SamplingParams | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._backend = backend
        self._defaults = defaults or SamplingParams()
        # With cloud endpoints configured, requests go through the hybrid engine.
        self._settings = (
            settings
            if settings is not None
            and (settings.device.cloud.endpoints or settings.device.discovery.enabled)
            else None
        )
        self._engine: HybridEngine | None = None

    @classmethod
    def local(
        cls,
        model: str | Path | None = None,
        *,
        settings: Settings | None = None,
        progress: ProgressCallback | None = None,
        **model_overrides: Any,
    ) -> Self:
        """A client on a local GGUF model (the embedded default when ``model`` is None),
        loaded in the calling thread (about half a second for the default model; inside a
        running event loop use :meth:`AsyncClient.open`, which does not block the loop).

        Args:
            model: GGUF path; overrides ``settings.device.model.path``.
            settings: defaults to :meth:`Settings.load` (TOML + environment).
            progress: called with (bytes done, total) if the default model must be assembled.
            **model_overrides: fields of :class:`~edgecloud.config.LocalModelConfig`
                such as ``n_ctx=4096`` or ``n_threads=2``.
        """
        backend, loaded = cls._load_local(model, settings, progress, model_overrides)
        return cls(backend, defaults=loaded.device.generation, settings=loaded)

    @classmethod
    def from_config(cls, path: str | Path, *, progress: ProgressCallback | None = None) -> Self:
        """A client built from a TOML settings file (plus ``EDGECLOUD_*`` variables):
        the local model, and, when ``device.cloud.endpoints`` lists any, the cloud
        endpoints, routing policies and escalation log (for :class:`AsyncClient`, the
        cloud side starts on first use, in the running loop)."""
        return cls.local(settings=Settings.load(path), progress=progress)

    @property
    def backend(self) -> TextBackend:
        return self._backend

    def _params(self, overrides: Mapping[str, Any]) -> SamplingParams:
        given = {k: v for k, v in overrides.items() if v is not None}
        if "stop" in given and isinstance(given["stop"], str):
            given["stop"] = (given["stop"],)
        try:
            return SamplingParams.model_validate({**self._defaults.model_dump(), **given})
        except ValidationError as exc:
            raise InvalidRequestError(format_validation_error(exc)) from exc

    def _schema(self, options: GenerateOptions) -> OutputSchema | None:
        """The request's output schema, refused now when the device cannot compile it
        (it is the fallback of a cloud answer too, so it must be able to)."""
        schema = request_schema(
            options.get("schema"), options.get("tools"), options.get("tool_choice")
        )
        if schema is None:
            return None
        self._backend.check_schema(schema.text)
        return schema

    def _start(
        self,
        prompt: Prompt | bytes,
        overrides: Mapping[str, Any],
        cancel: threading.Event,
        schema: OutputSchema | None = None,
    ) -> tuple[Iterator[Chunk | Finish], ResultBuilder]:
        from edgecloud.device._observe import observed_local

        started = time.perf_counter()
        events = self._backend.stream(normalize_prompt(prompt), self._params(overrides), cancel)
        return observed_local(events), ResultBuilder(self._backend.info.model, started, schema)

    def _start_hybrid(
        self, engine: HybridEngine, prompt: Prompt | bytes, overrides: Mapping[str, Any],
        options: GenerateOptions, schema: OutputSchema | None = None,
    ) -> tuple[AsyncIterator[Chunk | Finish], ResultBuilder, CancelScope]:  # fmt: skip
        from edgecloud.device._hybrid import CancelScope

        started = time.perf_counter()
        scope = CancelScope()
        params = self._params(overrides)
        agen = engine.stream(
            normalize_prompt(prompt), params, route=options.get("route"), cancel=scope,  # type: ignore[arg-type]
            speculative=options.get("speculative"), show_unverified=options.get("show_unverified"),
        )  # fmt: skip
        return agen, ResultBuilder(self._backend.info.model, started, schema), scope

    def _begin(
        self, prompt: Prompt | bytes, options: GenerateOptions, engine: HybridEngine | None
    ) -> tuple[Iterator[Chunk | Finish] | AsyncIterator[Chunk | Finish], ResultBuilder, _Cancel]:
        """Start a checked request: on the hybrid engine when one serves it (the events
        are then an async iterator), else on the local backend."""
        overrides = {k: v for k, v in options.items() if k not in _ROUTING_OPTIONS}
        schema = self._schema(options)
        if schema is not None:
            overrides["json_schema"] = schema.text
        if engine is not None:
            return self._start_hybrid(engine, prompt, overrides, options, schema)
        cancel = threading.Event()
        events, builder = self._start(prompt, overrides, cancel, schema)
        return events, builder, cancel

    def _check_options(self, options: GenerateOptions) -> None:
        unknown = sorted(set(options) - set(GenerateOptions.__annotations__))
        if unknown:
            raise InvalidRequestError(
                f"unknown option(s) {unknown}; known: {sorted(GenerateOptions.__annotations__)}"
            )
        self._check_route(options.get("route"))
        show = options.get("show_unverified")
        if show is not None and not isinstance(show, bool):
            raise InvalidRequestError(f"show_unverified must be True, False or None, not {show!r}")
        k = options.get("speculative")
        if k is not None and (
            isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_DRAFT_TOKENS
        ):
            raise InvalidRequestError(
                f"speculative must be a draft length from 0 to {MAX_DRAFT_TOKENS} or None, "
                f"not {k!r}"
            )

    def _check_route(self, route: str | None) -> None:
        if route not in (None, "local", "cloud"):
            raise InvalidRequestError(f"route must be 'local', 'cloud' or None, not {route!r}")
        if route == "cloud" and self._settings is None and self._engine is None:
            raise InvalidRequestError(
                "route='cloud' needs cloud endpoints in device.cloud.endpoints"
            )

    @staticmethod
    def _load_local(
        model: str | Path | None,
        settings: Settings | None,
        progress: ProgressCallback | None,
        overrides: Mapping[str, Any],
    ) -> tuple[TextBackend, Settings]:
        """The backend and the settings it was built from (loaded here when not given)."""
        from edgecloud.device import load_text_backend

        settings = settings or Settings.load()
        return load_text_backend(settings, model=model, progress=progress, **overrides), settings

    async def _engine_close(self) -> None:
        if self._engine is not None:
            await self._engine.aclose()


class _Outcome:
    """The :class:`GenerationResult` a stream has once it ended (shared by both streams)."""

    _result: GenerationResult | None = None
    _builder: ResultBuilder

    def _checked(self) -> GenerationResult:
        """:attr:`result`, raising the schema's error when the answer does not follow it
        (what ``generate`` returns)."""
        result = self.result
        if self._builder.schema_error is not None:
            raise self._builder.schema_error
        return result

    @property
    def finished(self) -> bool:
        """Whether the stream reached its end, so that :attr:`result` can be read."""
        return self._result is not None

    @property
    def result(self) -> GenerationResult:
        """The whole answer: text, confidence, usage, timings and route.

        Raises:
            StreamNotFinishedError: the stream has not ended yet (iterate it to
                the end, or close it), or it failed with an error.
        """
        if self._result is None:
            raise StreamNotFinishedError(
                "the stream has no result yet: iterate it to the end or close it first"
            )
        return self._result


class Stream(_Outcome, Closing):
    """A running generation: iterate for :class:`Chunk` objects.

    ``result`` is the :class:`GenerationResult` once the stream is exhausted
    (or closed); ``cancel()`` (from any thread) ends it within one token;
    ``close()`` also frees the model for the next caller. Use it as a context
    manager.
    """

    def __init__(
        self, events: Iterator[Chunk | Finish], builder: ResultBuilder, cancel: _Cancel
    ) -> None:
        self._events = events
        self._builder = builder
        self._cancel = cancel

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Chunk:
        event = next(self._events)
        now = time.perf_counter()
        if isinstance(event, Finish):
            self._result = self._builder.finish(event, now)
            self._release()
            raise StopIteration
        self._builder.add(event, now)
        return event

    def _release(self) -> None:
        # The backend's generator holds the model until it runs to its end; close
        # it now rather than when the garbage collector gets to it.
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        self._cancel.set()
        if self._result is None:
            for _ in self:  # drain to the Finish marker so `result` is set
                pass
        self._release()


class Client(_BaseClient, Closing):
    """Generate text on the device, with per-token confidence.

    Thread-safe: many threads may share one client; generations run one at a
    time in arrival order (see :class:`~edgecloud.device.LlamaCppBackend`).

    Examples:
        >>> from edgecloud import Client
        >>> with Client.local() as client:                     # doctest: +SKIP
        ...     for chunk in client.stream("Q: What is 2+2?\\nA:", max_tokens=8):
        ...         print(chunk.text, end="")
        ...     result = client.generate("Q: Capital of France?\\nA:", stop=["\\n"])
        ...     print(result.text, result.confidence.mean_logprob, result.source)
    """

    def __init__(
        self,
        backend: TextBackend,
        *,
        defaults: SamplingParams | None = None,
        settings: Settings | None = None,
        engine: Callable[[], HybridEngine] | None = None,
    ) -> None:
        """Args:
        backend: the local model.
        defaults: sampling defaults.
        settings: with ``device.cloud.endpoints``, requests go through the hybrid engine.
        engine: builds a custom hybrid engine instead (called inside the client's loop).
        """
        super().__init__(backend, defaults=defaults, settings=settings)
        self._runner: LoopThread | None = None
        self._upkeep: asyncio.Task[None] | None = None
        if engine is not None:
            factory = engine
            self._runner = LoopThread()

            async def make() -> HybridEngine:
                return factory()

            self._engine = self._runner.run(make())
        elif self._settings is not None:
            from edgecloud.device._factory import build_engine, maintain

            runner = self._runner = LoopThread()
            hybrid_settings = self._settings

            async def start() -> HybridEngine:
                return build_engine(backend, hybrid_settings)

            self._engine = runner.run(start())
            engine_ = self._engine

            async def upkeep() -> asyncio.Task[None]:
                return asyncio.get_running_loop().create_task(maintain(engine_, hybrid_settings))

            self._upkeep = runner.run(upkeep())

    @property
    def engine(self) -> HybridEngine | None:
        """The hybrid engine, when cloud endpoints are configured."""
        return self._engine

    def stream(self, prompt: Prompt | bytes, **options: Unpack[GenerateOptions]) -> Stream:
        """Start generating; returns a :class:`Stream` of chunks.

        Args:
            prompt: raw text (completion), or chat messages (rendered with the
                model's chat template).
            **options: :class:`~edgecloud.types.GenerateOptions`: ``max_tokens``,
                ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop`` override the
                configured :class:`~edgecloud.types.SamplingParams`; ``route`` is
                ``"local"`` or ``"cloud"`` to force where the answer comes from, None
                to let the routing policies decide (needs cloud endpoints);
                ``schema`` (a JSON-schema dict or a pydantic model class) constrains the
                answer to JSON that follows it (``result.parsed`` holds the value);
                ``tools``/``tool_choice`` (OpenAI's shapes) make the answer a tool call
                (``result.tool_calls``);
                ``show_unverified`` and ``speculative`` tune mid-answer hand-offs and
                cloud answers (they matter only with cloud endpoints).

        A chunk with ``retracted`` set asks the app to remove that many characters from
        the end of the text shown so far before adding the chunk's text: the cloud
        rejected the end of the device's text when it took over (``show_unverified=False``
        avoids that). The stream's ``result`` has the corrected text.

        Raises:
            InvalidRequestError: bad prompt, option or parameter, or a schema the
                grammar compiler cannot handle.
            ContextOverflowError: the prompt does not fit in the model context.

        With a schema, a stream whose answer was cut before it was valid JSON ends with
        ``result.parsed`` None and ``finish_reason="length"``; :meth:`generate` raises
        :class:`~edgecloud.errors.StructuredOutputError` instead.
        """
        self._check_options(options)
        runner = self._runner
        engine = self._engine if runner is not None else None
        events, builder, cancel = self._begin(prompt, options, engine)
        if runner is not None and not isinstance(events, Iterator):
            return Stream(iterate_async(events, runner), builder, cancel)
        assert isinstance(events, Iterator)
        return Stream(events, builder, cancel)

    def upload_pending(self) -> int:
        """Upload waiting escalation records now; returns how many the cloud acknowledged."""
        if self._engine is None or self._runner is None:
            return 0
        return self._runner.run(self._engine.upload_pending())

    def generate(
        self, prompt: Prompt | bytes, **options: Unpack[GenerateOptions]
    ) -> GenerationResult:
        """Generate a whole answer; the arguments and errors are those of :meth:`stream`.

        Raises:
            StructuredOutputError: with a schema, the answer is not valid JSON of it
                (``max_tokens`` cut it, most likely).
        """
        with self.stream(prompt, **options) as stream:
            for _ in stream:
                pass
        return stream._checked()

    def close(self) -> None:
        if self._runner is not None:
            if self._upkeep is not None:
                # awaited, so what it runs (LAN discovery among it) is closed, not abandoned
                self._runner.run(_cancelled(self._upkeep))
                self._upkeep = None
            self._runner.run(self._engine_close())
            self._runner.close()
            self._runner = None
        self._backend.close()


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has cleaned up."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class AsyncStream(_Outcome, AsyncClosing):
    """The async twin of :class:`Stream`: ``async for chunk in stream``.

    The model runs in a worker thread; chunks cross to the event loop through a
    queue, so the loop never blocks on native code. Cancelling the consuming
    task (or ``aclose()``) stops generation within one token.
    """

    def __init__(
        self,
        events: Iterator[Chunk | Finish] | AsyncIterator[Chunk | Finish],
        builder: ResultBuilder,
        cancel: _Cancel,
    ) -> None:
        self._events = events
        self._builder = builder
        self._cancel = cancel
        self._queue: asyncio.Queue[object] | None = None
        self._worker: threading.Thread | None = None
        self._exhausted = False
        # A stream dropped mid-way (``break`` out of ``async for``) cancels its generation
        # so the worker thread frees the model; the thread holds no reference to ``self``.
        weakref.finalize(self, cancel.set)

    def __aiter__(self) -> AsyncStream:
        return self

    async def _next_event(self) -> object:
        if isinstance(self._events, AsyncIterator):  # the hybrid engine: already async
            try:
                return await self._events.__anext__()
            except StopAsyncIteration:
                return DONE
            except asyncio.CancelledError:
                self._cancel.set()
                raise
        if self._queue is None:
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            self._worker = threading.Thread(
                target=pump_events, args=(self._events, loop, self._queue, self._cancel),
                name="edgecloud-generate", daemon=True,
            )  # fmt: skip
            self._worker.start()
        try:
            return await self._queue.get()
        except asyncio.CancelledError:
            self._cancel.set()
            raise

    async def __anext__(self) -> Chunk:
        if self._exhausted:
            raise StopAsyncIteration
        item = await self._next_event()
        now = time.perf_counter()
        if item is DONE:
            self._exhausted = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._exhausted = True
            raise item
        if isinstance(item, Finish):
            self._result = self._builder.finish(item, now)
            return await self.__anext__()
        assert isinstance(item, Chunk)
        self._builder.add(item, now)
        return item

    def cancel(self) -> None:
        self._cancel.set()

    async def aclose(self) -> None:
        self._cancel.set()
        if isinstance(self._events, AsyncIterator):
            aclose = getattr(self._events, "aclose", None)
            if self._result is None and not self._exhausted:
                async for _ in self:
                    pass
            if aclose is not None:
                await aclose()
            self._exhausted = True
            return
        if self._queue is None:  # never started: close the generator here
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
            self._exhausted = True
            return
        async for _ in self:
            pass


class AsyncClient(_BaseClient, AsyncClosing):
    """The asyncio twin of :class:`Client`; model calls run in worker threads.

    Open it with ``await AsyncClient.open(...)``: the model loads in a worker
    thread while the event loop keeps running.

    Examples:
        >>> import asyncio
        >>> from edgecloud import AsyncClient
        >>> async def main() -> None:                          # doctest: +SKIP
        ...     async with await AsyncClient.open() as client:
        ...         async for chunk in client.stream("Q: What is 2+2?\\nA:", max_tokens=8):
        ...             print(chunk.text, end="")
        ...         result = await client.generate("Q: Capital of Italy?\\nA:", stop=["\\n"])
        ...         print(result.text, result.confidence.mean_logprob)
        >>> asyncio.run(main())                                # doctest: +SKIP
    """

    @classmethod
    async def open(
        cls,
        model: str | Path | None = None,
        *,
        settings: Settings | None = None,
        progress: ProgressCallback | None = None,
        **model_overrides: Any,
    ) -> AsyncClient:
        """A client on a local GGUF model, loaded in a worker thread; arguments as
        :meth:`Client.local`. The cloud side (with ``device.cloud.endpoints``) starts
        on first use, in the running loop.

        Cancelling the call while the model loads closes the model once it is loaded.

        Raises:
            ConfigError: bad settings or model overrides.
            ModelLoadError: the model cannot be loaded.
        """
        load = asyncio.ensure_future(
            asyncio.to_thread(cls._load_local, model, settings, progress, model_overrides)
        )
        try:
            # Shielded: a cancelled caller must not orphan a model that is half loaded.
            backend, loaded = await asyncio.shield(load)
        except asyncio.CancelledError:
            load.add_done_callback(_close_loaded)
            raise
        return cls(backend, defaults=loaded.device.generation, settings=loaded)

    @property
    def engine(self) -> HybridEngine | None:
        """The hybrid engine once it runs: cloud endpoints are configured and the first
        request started it (the cloud side starts on first use)."""
        return self._engine

    def _hybrid(self) -> HybridEngine | None:
        if self._settings is None:
            return None
        if self._engine is None:
            from edgecloud.device._factory import build_engine, maintain

            self._engine = build_engine(self._backend, self._settings)
            self._upkeep_task = asyncio.get_running_loop().create_task(
                maintain(self._engine, self._settings)
            )
        return self._engine

    def stream(self, prompt: Prompt | bytes, **options: Unpack[GenerateOptions]) -> AsyncStream:
        """Start generating; see :meth:`Client.stream`. Call it inside the running loop."""
        self._check_options(options)
        events, builder, cancel = self._begin(prompt, options, self._hybrid())
        return AsyncStream(events, builder, cancel)

    async def generate(
        self, prompt: Prompt | bytes, **options: Unpack[GenerateOptions]
    ) -> GenerationResult:
        """Generate a whole answer; see :meth:`Client.generate`."""
        async with self.stream(prompt, **options) as stream:
            async for _ in stream:
                pass
        return stream._checked()

    async def aclose(self) -> None:
        task = getattr(self, "_upkeep_task", None)
        if task is not None:
            await _cancelled(task)
        await self._engine_close()
        await asyncio.to_thread(self._backend.close)


def _close_loaded(load: asyncio.Future[tuple[TextBackend, Settings]]) -> None:
    """Close the backend an abandoned :meth:`AsyncClient.open` loaded."""
    if not load.cancelled() and load.exception() is None:
        load.result()[0].close()
