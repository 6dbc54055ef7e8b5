"""The cloud side of split inference, over grpc.aio.

One server speaks two services for the same tensor models:

* ``edgecloud.v1.SplitService``: runs tails from streamed activations,
  profiles tails, answers link probes;
* ``inference.GRPCInferenceService`` (KServe v2 / Open Inference Protocol):
  whole-model inference, so Triton and KServe clients work unchanged.

onnxruntime calls run in worker threads, never on the event loop. Errors
raised on purpose map to sanitized status codes (``NOT_FOUND`` for an unknown
model, ``INVALID_ARGUMENT`` for a bad cut or activation); anything else is
``INTERNAL`` with a fixed message, the traceback staying in the server log.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc import aio

from edgecloud._proto.inference import grpc_service_pb2 as kpb
from edgecloud._proto.inference import grpc_service_pb2_grpc as kpb_grpc
from edgecloud._proto.v1 import split_pb2 as spb
from edgecloud._proto.v1 import split_pb2_grpc as spb_grpc
from edgecloud.errors import (
    ActivationError,
    ConfigError,
    EdgeCloudError,
    InvalidRequestError,
    UnknownModelError,
)
from edgecloud.split import _wire
from edgecloud.split._codec import Compression, decode, encode
from edgecloud.split._store import ModelStore, check_activation

__all__ = ["BackgroundServer", "SplitServer", "status_for_split"]

log = logging.getLogger("edgecloud.split")

_VERSION = "1"

# KServe v2 tensor data types <-> numpy dtype names
_KSERVE_TO_NUMPY = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
_NUMPY_TO_KSERVE = {v: k for k, v in _KSERVE_TO_NUMPY.items()}
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "UINT8": "uint_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def status_for_split(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and client-safe message for an exception raised by a handler."""
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, InvalidRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, EdgeCloudError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


async def _abort(context: aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    code, message = status_for_split(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("split handler failed", exc_info=exc)
    await context.abort(code, message)


class SplitServicer(spb_grpc.SplitServiceServicer):
    def __init__(self, store: ModelStore, *, max_activation_bytes: int, chunk_bytes: int) -> None:
        self._store = store
        self._max = max_activation_bytes
        self._chunk = chunk_bytes

    async def RunTail(
        self, request_iterator: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            start, tensors = await _wire.receive(request_iterator, max_bytes=self._max)
            if start is None:
                raise ActivationError("the stream did not start with a TailStart")
            model = self._store.get(start.model)
            p = model.partitioner
            if start.model_sha256 and start.model_sha256 != p.sha256:
                raise InvalidRequestError(
                    f"model {start.model!r} differs from the device's copy (sha256 "
                    f"{p.sha256[:12]}… here, {start.model_sha256[:12]}… there)"
                )
            cut = p.cut(list(start.cut))
            names = [t.name for t in tensors]
            if sorted(names) != sorted(cut.tensors):
                raise ActivationError(f"the cut is {list(cut.tensors)}, the stream sent {names}")
            t0 = time.perf_counter()
            feeds = {t.name: decode(t, max_bytes=self._max) for t in tensors}
            for name, value in feeds.items():
                check_activation(p, name, value)
            tail = model.tail(cut)
            t1 = time.perf_counter()
            outputs = await asyncio.to_thread(tail.run, feeds)
            t2 = time.perf_counter()
            encoding = _wire.ENCODING_NAMES.get(start.output_encoding, "float32")
            compression: Compression = (
                "zstd" if start.output_compression == spb.COMPRESSION_ZSTD else "none"
            )
            encoded = [encode(n, v, encoding, compression) for n, v in outputs.items()]
            t3 = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a traceback
            await _abort(context, exc)
            return
        for chunk in _wire.chunks(encoded, self._chunk):
            yield chunk
        yield spb.SplitChunk(
            done=spb.TailDone(compute_ms=(t2 - t1) * 1e3, codec_ms=(t1 - t0 + t3 - t2) * 1e3)
        )

    async def ProfileTails(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            model = self._store.get(request.model)
            repeats = max(1, min(int(request.repeats) or 5, 100))
            timings = await asyncio.to_thread(_profile_tails, model, repeats)
        except Exception as exc:  # noqa: BLE001 - see RunTail
            await _abort(context, exc)
            raise AssertionError("unreachable") from None
        return spb.ProfileTailsResponse(
            model_sha256=model.partitioner.sha256,
            provider=model.provider,
            timings=[spb.TailTiming(cut=list(c), tail_ms=ms) for c, ms in timings],
        )

    async def Ping(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        n = min(int(request.reply_bytes), self._max)
        return spb.PingReply(payload=b"\0" * n)


def _profile_tails(model: Any, repeats: int) -> list[tuple[tuple[str, ...], float]]:
    """Median tail time of every cut, on a zero activation of batch 1."""
    p = model.partitioner
    out: list[tuple[tuple[str, ...], float]] = []
    for cut in p.cuts():
        if set(cut.tensors) == set(p.outputs):
            out.append((cut.tensors, 0.0))
            continue
        tail = model.tail(cut)
        feeds = {}
        for name in cut.tensors:
            info = p.tensor(name)
            shape = tuple(1 if d is None else d for d in info.shape)
            feeds[name] = np.zeros(shape, dtype=info.dtype)
        tail.run(feeds)  # warm-up: first run allocates
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            tail.run(feeds)
            times.append(time.perf_counter() - t0)
        out.append((cut.tensors, statistics.median(times) * 1e3))
    return out


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, store: ModelStore, *, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return kpb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self._store.get(request.name)
            self._check_version(request.version)
        except EdgeCloudError:
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        from edgecloud._version import __version__

        return kpb.ServerMetadataResponse(name="edgecloud", version=__version__, extensions=[])

    async def ModelMetadata(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            model = self._store.get(request.name)
            self._check_version(request.version)
        except Exception as exc:  # noqa: BLE001 - see RunTail
            await _abort(context, exc)
            raise AssertionError("unreachable") from None

        def meta(specs: Sequence[Any]) -> list[Any]:
            return [
                kpb.ModelMetadataResponse.TensorMetadata(
                    name=s.name,
                    datatype=_NUMPY_TO_KSERVE.get(s.dtype, s.dtype),
                    shape=[-1 if d is None else d for d in s.shape],
                )
                for s in specs
            ]

        return kpb.ModelMetadataResponse(
            name=model.name,
            versions=[_VERSION],
            platform="onnxruntime_onnx",
            inputs=meta(model.whole.inputs),
            outputs=meta(model.whole.outputs),
        )

    async def ModelInfer(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            model = self._store.get(request.model_name)
            self._check_version(request.model_version)
            feeds = self._inputs(request)
            wanted = [o.name for o in request.outputs] or None
            outputs = await asyncio.to_thread(model.whole.run, feeds, wanted)
        except Exception as exc:  # noqa: BLE001 - see RunTail
            await _abort(context, exc)
            raise AssertionError("unreachable") from None
        response = kpb.ModelInferResponse(
            model_name=model.name, model_version=_VERSION, id=request.id
        )
        for name, value in outputs.items():
            arr = np.ascontiguousarray(value)
            response.outputs.add(
                name=name, datatype=_NUMPY_TO_KSERVE.get(str(arr.dtype), "BYTES"), shape=arr.shape
            )
            response.raw_output_contents.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
        return response

    def _check_version(self, version: str) -> None:
        if version not in ("", _VERSION):
            raise UnknownModelError(f"unknown model version {version!r}; only {_VERSION!r}")

    def _inputs(self, request: Any) -> dict[str, np.ndarray[Any, Any]]:
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InvalidRequestError(
                f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs"
            )
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for i, t in enumerate(request.inputs):
            dtype = _KSERVE_TO_NUMPY.get(t.datatype)
            if dtype is None:
                raise InvalidRequestError(f"input {t.name!r}: unsupported datatype {t.datatype!r}")
            shape = tuple(int(d) for d in t.shape)
            if any(d < 0 for d in shape):
                raise InvalidRequestError(f"input {t.name!r}: negative dimension in {shape}")
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * np.dtype(dtype).itemsize
            if nbytes > self._max:
                raise ActivationError(
                    f"input {t.name!r} is {nbytes} bytes, over the limit of {self._max}"
                )
            if raw:
                if len(raw[i]) != nbytes:
                    raise InvalidRequestError(
                        f"input {t.name!r}: {len(raw[i])} bytes of data for shape {shape} "
                        f"{t.datatype} ({nbytes} bytes)"
                    )
                arr = np.frombuffer(raw[i], dtype=np.dtype(dtype).newbyteorder("<"))
            else:
                field = _CONTENTS_FIELD.get(t.datatype)
                values = list(getattr(t.contents, field)) if field else []
                if len(values) != count:
                    raise InvalidRequestError(
                        f"input {t.name!r}: {len(values)} values for shape {shape}"
                    )
                arr = np.asarray(values, dtype=dtype)
            feeds[t.name] = arr.astype(dtype, copy=False).reshape(shape)
        return feeds


class SplitServer:
    """A running split/KServe server; build with :meth:`start`.

    Examples:
        >>> async def main() -> None:                                     # doctest: +SKIP
        ...     server = await SplitServer.start({"digits": "digits_cnn.onnx"}, port=0)
        ...     print("listening on", server.port)
        ...     await server.wait_for_termination()
    """

    def __init__(self, server: aio.Server, store: ModelStore, port: int) -> None:
        self._server = server
        self.store = store
        self.port = port

    @classmethod
    async def start(
        cls,
        models: Mapping[str, str | Path],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_activation_bytes: int = 64 * 1024 * 1024,
        chunk_bytes: int = 256 * 1024,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[aio.ServerInterceptor] = (),
    ) -> SplitServer:
        """Load the models and serve both services on ``host:port`` (0 picks a port).

        Raises:
            ModelNotFoundError, ModelIntegrityError: a model cannot be loaded.
            ConfigError: the address cannot be bound.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_health.v1.health import aio as health_aio

        store = await asyncio.to_thread(ModelStore, models, providers=providers, threads=threads)
        # A KServe request carries a whole tensor in one message; leave room for headers.
        size = max(max_activation_bytes, chunk_bytes) + 1024 * 1024
        server = aio.server(
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                ("grpc.so_reuseport", 0),
            ],
        )
        spb_grpc.add_SplitServiceServicer_to_server(  # type: ignore[no-untyped-call]
            SplitServicer(
                store, max_activation_bytes=max_activation_bytes, chunk_bytes=chunk_bytes
            ),
            server,
        )
        kpb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            KServeServicer(store, max_bytes=max_activation_bytes), server
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = (
                server.add_secure_port(address, credentials)
                if credentials is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError as exc:
            store.close()
            raise ConfigError(f"cannot listen on {address}: {exc}") from exc
        await server.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("split service on %s:%d serving %s", host, bound, store.names)
        return cls(server, store, bound)

    async def stop(self, grace: float | None = 1.0) -> None:
        await self._server.stop(grace)
        self.store.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


class BackgroundServer:
    """A :class:`SplitServer` on its own event loop in a daemon thread (tests, benchmarks, CLI).

    Examples:
        >>> with BackgroundServer({"digits": "digits_cnn.onnx"}) as srv:  # doctest: +SKIP
        ...     print(srv.address)
    """

    def __init__(self, models: Mapping[str, str | Path], **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self.server: SplitServer = self._call(SplitServer.start(models, **kwargs))
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            raise

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self.server.stop(0.5))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
