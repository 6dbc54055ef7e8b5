"""The FastAPI application of ``edgecloud device serve`` and the uvicorn server around it.

Every request goes through one :class:`~edgecloud.AsyncClient`, so with cloud endpoints
configured the hybrid engine answers it: it may escalate, or hand off mid-answer, and
the ``edgecloud`` extension field says so. The model generates one answer at a time;
up to ``device.http.max_queue`` requests wait behind it and more are refused (429).

A streaming request is answered only once its first event is in (so that a bad request
still gets its HTTP status rather than an error inside a 200 stream). A client that
goes away, mid-stream or while it waits, cancels its generation: the model is free
for the next request within one token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from edgecloud._client import AsyncClient, AsyncStream
from edgecloud.common.logs import bind_request_id, clean_request_id
from edgecloud.common.metrics import scrape
from edgecloud.config import Settings
from edgecloud.device._answer import Transcript
from edgecloud.errors import ConfigError, EdgeCloudError
from edgecloud.http._protocol import (
    ChatRequest,
    CompletionRequest,
    HttpError,
    Kind,
    ResponseBuilder,
    error_from,
    generate_options,
    parse_request,
    sse,
)
from edgecloud.types import Chunk, GenerationResult

if TYPE_CHECKING:
    import uvicorn

__all__ = ["OpenAIServer", "Server", "create_app", "serve"]

log = logging.getLogger("edgecloud.http")
T = TypeVar("T")

DONE = sse("[DONE]")
CLEANUP_TIMEOUT_S = 10.0
"""Longest a cancelled generation may take to stop (it stops within one token)."""


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class OpenAIServer:
    """What the routes share: the client, the admission count, and a few counters.

    Args:
        settings: ``device.http`` and, when ``client`` is None, everything to open one.
        client: serve through this client; None opens one from ``settings`` at startup.
        close_client: close ``client`` at shutdown (one opened here always is).
    """

    def __init__(
        self, settings: Settings, client: AsyncClient | None = None, *, close_client: bool = False
    ) -> None:
        self.settings = settings
        self.config = settings.device.http
        self._client = client
        self._owns_client = client is None or close_client
        self.created = int(time.time())
        self.in_flight = 0
        """Requests admitted and not yet answered: one generating, the rest waiting."""
        self.served = 0
        self.cancelled = 0
        """Generations stopped before their end: their client went away, they failed, or
        the server shut down."""
        self.draining = False
        if any(len(k) < 8 or k != k.strip() for k in self.config.api_keys):
            # checked here, not in the settings model, whose errors would echo the keys
            raise ConfigError("device.http.api_keys: each key needs 8 characters or more, "
                              "without spaces around it")  # fmt: skip
        self._key_digests = [hashlib.sha256(k.encode()).digest() for k in self.config.api_keys]

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise HttpError(503, "the model is not loaded yet", type="server_error",
                            code="not_ready")  # fmt: skip
        return self._client

    @property
    def loaded(self) -> bool:
        """Whether the client is open (the model loaded)."""
        return self._client is not None

    @property
    def has_cloud(self) -> bool:
        """Whether the settings give the device a cloud (endpoints, or discovery)."""
        device = self.settings.device
        return bool(device.cloud.endpoints) or device.discovery.enabled

    @property
    def model_name(self) -> str:
        return self.config.model_name or self.client.backend.info.model

    async def start(self) -> None:
        if self._client is None:
            self._client = await AsyncClient.open(settings=self.settings)

    async def aclose(self) -> None:
        self.draining = True
        if self._owns_client and self._client is not None:
            await self._client.aclose()

    def authorize(self, request: Request) -> None:
        """Check ``Authorization: Bearer <key>`` against every key, in constant time."""
        if not self._key_digests:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(key.strip().encode()).digest()
        match = False
        for digest in self._key_digests:  # no early exit: the time does not tell which
            match |= hmac.compare_digest(given, digest)
        if scheme.lower() != "bearer" or not key.strip() or not match:
            raise HttpError(401, "Incorrect or missing API key: send Authorization: Bearer "
                            "<key>", code="invalid_api_key")  # fmt: skip

    async def read_body(self, request: Request) -> bytes:
        """The body, refused (413) once it is known to exceed ``max_body_bytes``: by its
        Content-Length before reading, and by what arrives (a chunked body has none)."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HttpError(400, "Content-Length is not a number")
            if int(declared) > limit:
                raise _too_large(limit)
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)

    def admit(self) -> None:
        """Count a request in, or refuse it: 503 while shutting down, 429 when
        ``max_queue`` requests already wait behind the one generating."""
        if self.draining:
            raise HttpError(503, "the server is shutting down", type="server_error",
                            code="shutting_down")  # fmt: skip
        if self.in_flight > self.config.max_queue:
            raise HttpError(429, f"too many requests: {self.in_flight - 1} already wait for "
                            "the model (device.http.max_queue)", type="rate_limit_error",
                            code="queue_full")  # fmt: skip
        self.in_flight += 1

    async def release(self, stream: AsyncStream) -> None:
        """End a request: stop its generation if it still runs (it stops within one token)
        and wait for that, so the model is free when the next request is admitted."""
        try:
            if not stream.finished:
                stream.cancel()
                self.cancelled += 1
            with anyio.move_on_after(CLEANUP_TIMEOUT_S, shield=True):
                await stream.aclose()
        except Exception as exc:  # noqa: BLE001 - a failed cleanup must not hide the answer
            log.warning("closing a stream failed: %r", exc)
        finally:
            self.in_flight -= 1

    def options(self, request: ChatRequest | CompletionRequest) -> dict[str, Any]:
        cap = min(self.config.max_tokens, self.client.backend.n_ctx)
        default = self.settings.device.generation.max_tokens
        return generate_options(request, max_tokens=default, cap=cap)

    async def generate(self, http: Request, kind: Kind) -> Response:
        self.authorize(http)
        request = parse_request(kind, await self.read_body(http))
        if request.model != self.model_name:
            raise HttpError(404, f"The model `{request.model}` does not exist; this server "
                            f"serves `{self.model_name}`", param="model",
                            code="model_not_found")  # fmt: skip
        if isinstance(request, ChatRequest):
            prompt: Any = [m.to_chat() for m in request.messages]
        else:
            prompt = request.text()
        options = self.options(request)
        builder = ResponseBuilder(
            kind, self.model_name, logprobs=request.alternatives(),
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            tools=isinstance(request, ChatRequest) and request.calls_tools(),
        )  # fmt: skip
        where = "messages" if kind == "chat" else "prompt"
        self.admit()
        try:
            # A caller's X-Request-ID follows the request into the engine's logs, its cloud
            # calls (gRPC metadata) and its escalation record.
            with bind_request_id(clean_request_id(http.headers.get("x-request-id"))):
                stream = self.client.stream(prompt, **options)
        except BaseException as exc:
            self.in_flight -= 1
            if isinstance(exc, EdgeCloudError):
                raise error_from(exc, prompt_param=where) from None
            raise
        try:
            if request.stream:
                first = await _unless_gone(http, _first(stream))
            else:
                chunks, result = await _unless_gone(http, _collect(stream))
        except BaseException as exc:
            await self.release(stream)
            if isinstance(exc, EdgeCloudError):
                raise error_from(exc, prompt_param=where) from None
            raise
        if request.stream:  # the event generator releases the request when it ends
            return _EventStream(self._events(stream, first, builder), headers=_SSE_HEADERS,
                                media_type="text/event-stream")  # fmt: skip
        await self.release(stream)
        self.served += 1
        return JSONResponse(builder.whole(chunks, result))

    async def _events(
        self, stream: AsyncStream, first: Chunk | None, builder: ResponseBuilder
    ) -> AsyncIterator[bytes]:
        try:
            for obj in builder.head():
                yield sse(obj)
            chunk = first
            while chunk is not None:
                out = builder.chunk(chunk)
                if out is not None:
                    yield sse(out)
                chunk = await anext(stream, None)
            for obj in builder.tail(stream.result):
                yield sse(obj)
            yield DONE
            self.served += 1
        except EdgeCloudError as exc:  # the status line is sent: the error is an event
            yield sse(error_from(exc).body())
            yield DONE
        finally:
            await self.release(stream)


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"the request body is larger than {limit} bytes "
                     "(device.http.max_body_bytes)", code="request_too_large")  # fmt: skip


async def _first(stream: AsyncStream) -> Chunk | None:
    return await anext(stream, None)


async def _collect(stream: AsyncStream) -> tuple[list[Chunk], GenerationResult]:
    answer = Transcript()
    async for chunk in stream:
        answer.add(chunk)
    return answer.chunks, stream.result


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first (then cancel it)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise _ClientGone
    return task.result()


class _EventStream(StreamingResponse):
    """A stream whose body generator is always closed, at once, when the response ends.

    Starlette cancels the response when the client disconnects; if the cancellation
    lands while the generator is suspended at a ``yield``, nothing closes it until
    the garbage collector does, and the model would go on generating. Closing it here
    runs its ``finally``: the generation is cancelled and the request counted out.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.move_on_after(CLEANUP_TIMEOUT_S, shield=True):
                    await close()


def _error_response(exc: HttpError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def create_app(
    settings: Settings | None = None,
    *,
    client: AsyncClient | None = None,
    close_client: bool = False,
) -> FastAPI:
    """The OpenAI-compatible application (see :mod:`edgecloud.http`).

    Args:
        settings: defaults to :meth:`Settings.load`; ``device.http`` configures the API.
        client: serve through this client; None opens one from ``settings`` at startup
            (the model loads before the server listens).
        close_client: close ``client`` when the app shuts down.
    """
    state = OpenAIServer(settings or Settings.load(), client, close_client=close_client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="edgecloud device", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.edgecloud = state
    if state.config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=state.config.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(HttpError)
    async def _on_http_error(request: Request, exc: HttpError) -> Response:
        return _error_response(exc)

    @app.exception_handler(_ClientGone)
    async def _on_gone(request: Request, exc: _ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(EdgeCloudError)
    async def _on_sdk_error(request: Request, exc: EdgeCloudError) -> Response:
        return _error_response(error_from(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _on_route_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error_response(HttpError(exc.status_code, message, code=code))

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(HttpError(500, "internal server error", type="server_error"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await state.generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await state.generate(request, "completion")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        state.authorize(request)
        return JSONResponse({"object": "list", "data": [_model_card(state)]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        state.authorize(request)
        if model_id != state.model_name:
            raise HttpError(404, f"The model `{model_id}` does not exist", param="model",
                            code="model_not_found")  # fmt: skip
        return JSONResponse(_model_card(state))

    @app.get("/health")
    async def health() -> Response:
        body = {
            "status": "draining" if state.draining else "ok",
            "model": state.model_name,
            "in_flight": state.in_flight,
            "max_queue": state.config.max_queue,
            **_runtime(state),
        }
        return JSONResponse(body, status_code=503 if state.draining else 200)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        state.authorize(request)
        try:
            from prometheus_client import CONTENT_TYPE_LATEST
        except ImportError:
            raise HttpError(501, "prometheus_client is not installed: pip install "
                            "'edgecloud[http]'", type="server_error") from None  # fmt: skip
        return Response(scrape(), media_type=CONTENT_TYPE_LATEST)

    if state.config.web_app_enabled:  # last: its /{name} route would shadow GETs added after
        _add_web_app(app, state.config.web_app or WEB_APP)
    return app


WEB_APP = Path(__file__).with_name("web")
"""The web app shipped with edgecloud (``device.http.web_app`` replaces it)."""

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def _add_web_app(app: FastAPI, directory: Path) -> None:
    """Serve the files of ``directory`` (flat: no subfolders) at ``/`` and ``/<name>``.

    One path segment per route rather than a mount at ``/``: a mount would answer every
    GET, so ``GET /v1/chat/completions`` would get the app's 404 instead of the API's 405.
    The files are read from disk on each request (``Cache-Control: no-cache`` with an
    ETag): an edited app shows on the next reload, and the service worker revalidates.
    """
    if not (directory / "index.html").is_file():
        raise ConfigError(f"device.http.web_app: {directory} has no index.html")
    root = directory.resolve()

    def serve_file(name: str) -> Response:
        path = (root / name).resolve()
        if path.parent != root or not path.is_file() or name.startswith("."):
            raise HttpError(404, f"GET /{name}: Not Found", code="not_found")
        media = _MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return serve_file("index.html")

    @app.get("/{name}", include_in_schema=False)
    async def web_file(name: str) -> Response:
        return serve_file(name)


def _runtime(state: OpenAIServer) -> dict[str, Any]:
    """What ``/health`` adds for apps: the adapter version the device runs (None: the
    base model) and its cloud endpoints (None: a device without any), so a page can say
    that answers stay on the device. The cloud side starts with the first request:
    until then ``available`` is None (not checked yet)."""
    engine = state.client.engine if state.loaded else None
    cloud: dict[str, Any] | None = None
    if engine is not None and engine.pool is not None:
        pool = engine.pool
        cloud = {"endpoints": len(pool.endpoints), "available": len(pool.available()),
                 "healthy": sum(e.healthy is True for e in pool.endpoints)}  # fmt: skip
    elif engine is None and state.has_cloud:
        cloud = {"endpoints": len(state.settings.device.cloud.endpoints), "available": None,
                 "healthy": None}  # fmt: skip
    version = engine.adapter_version if engine is not None else None
    return {"adapter_version": version, "cloud": cloud}


def _model_card(state: OpenAIServer) -> dict[str, Any]:
    info = state.client.backend.info
    return {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "edgecloud",
        "edgecloud": {
            "backend": info.kind,
            **info.details,
        },  # not the path: clients need not know it
    }


def _uvicorn_config(app: FastAPI, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        app,
        timeout_graceful_shutdown=settings.device.http.shutdown_timeout_s,
        server_header=False,
        **kwargs,
    )


def _make_server(config: uvicorn.Config, state: OpenAIServer) -> uvicorn.Server:
    import uvicorn

    class _Draining(uvicorn.Server):
        """Refuses new requests (503) from the moment shutdown begins; announces the
        endpoint on the LAN while it listens (``device.http.advertise``)."""

        _announced: contextlib.AsyncExitStack | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            cfg = state.config
            if not cfg.advertise or not self.started:
                return
            from edgecloud.discovery import advertise_device

            port = self.servers[0].sockets[0].getsockname()[1]
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(advertise_device(
                port, host=self.config.host, model=state.model_name,
                certificate=Path(self.config.ssl_certfile) if self.config.ssl_certfile else None,
                interfaces=cfg.advertise_interfaces,
            ))  # fmt: skip
            self._announced = stack

        async def shutdown(self, sockets: Any = None) -> None:
            if self._announced is not None:  # withdrawn first: apps move on while it drains
                await self._announced.aclose()
                self._announced = None
            await super().shutdown(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again once it has shut down, so that its default
            # action ends the process; a server that shut down cleanly exits with 0.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return _Draining(config)


def serve(
    settings: Settings | None = None,
    *,
    client: AsyncClient | None = None,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve the API in the foreground until SIGINT/SIGTERM (``edgecloud device serve``).

    ``client`` (closed at shutdown) is opened from ``settings`` when None. The model
    loads before the server listens; on shutdown new requests get 503 and streams still
    running after ``device.http.shutdown_timeout_s`` are cut off.
    """
    settings = settings or Settings.load()
    http = settings.device.http
    where = host or http.host
    if not http.api_keys and where not in ("127.0.0.1", "::1", "localhost"):
        log.warning("serving on %s without API keys: anyone who reaches it may use the "
                    "model (set device.http.api_keys)", where)  # fmt: skip
    app = create_app(settings, client=client, close_client=True)
    config = _uvicorn_config(app, settings, host=where,
                             port=http.port if port is None else port,
                             log_level=log_level)  # fmt: skip
    _make_server(config, app.state.edgecloud).run()


class Server:
    """The API served from a background thread, for tests, benchmarks and apps that
    embed it: ``with Server(settings) as s: ... s.url``.

    Args:
        settings: as :func:`create_app`; ``device.http.host`` is where it listens.
        client: as :func:`create_app`.
        port: None: ``device.http.port`` (0 picks a free one).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: AsyncClient | None = None,
        port: int | None = None,
    ) -> None:
        settings = settings or Settings.load()
        self.app = create_app(settings, client=client)
        self.state: OpenAIServer = self.app.state.edgecloud
        http = settings.device.http
        self._socket = socket.create_server((http.host, http.port if port is None else port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = _uvicorn_config(self.app, settings, log_level="warning")
        self._server = _make_server(config, self.state)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API's base URL, as the openai client takes it (``.../v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> Server:
        """Start serving; returns once it listens (the model loaded, if it opens one)."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]},
            name="edgecloud-http", daemon=True,
        )  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the HTTP server failed to start (see the log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the HTTP server did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop accepting requests and shut down (running streams are cut off after
        ``device.http.shutdown_timeout_s``)."""
        self.state.draining = True
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._socket.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
