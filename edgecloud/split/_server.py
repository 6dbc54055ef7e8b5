"""The cloud side of split inference, over grpc.aio.

One server speaks two services for the same tensor models:

* ``edgecloud.v1.SplitService``: runs tails from streamed activations,
  profiles tails, answers link probes;
* ``inference.GRPCInferenceService`` (KServe v2 / Open Inference Protocol):
  whole-model inference, so Triton and KServe clients work unchanged.

The server comes from :func:`edgecloud.transport.create_server`: TLS (mTLS
with a client CA), per-device bearer tokens, health, reflection, and plain text
only when asked for and on a loopback host, as for the cloud service.

onnxruntime calls run in worker threads, never on the event loop. Errors map
to status codes through :func:`edgecloud.transport.status_for`, the one mapping
(``NOT_FOUND`` for an unknown model, ``INVALID_ARGUMENT`` for a bad cut or
activation); anything else is ``INTERNAL`` with a fixed message, the traceback
staying in the server log.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from grpc import aio

from edgecloud._proto.inference import grpc_service_pb2 as kpb
from edgecloud._proto.inference import grpc_service_pb2_grpc as kpb_grpc
from edgecloud._proto.v1 import split_pb2 as spb
from edgecloud._proto.v1 import split_pb2_grpc as spb_grpc
from edgecloud.common.lifecycle import Closing
from edgecloud.errors import (
    ActivationError,
    EdgeCloudError,
    InvalidRequestError,
    UnknownModelError,
)
from edgecloud.split import _wire
from edgecloud.split._codec import Compression, decode, encode
from edgecloud.split._store import ModelStore, check_activation
from edgecloud.transport._server import GrpcServer, create_server
from edgecloud.transport._settings import AuthConfig, TlsConfig
from edgecloud.transport._status import abort

__all__ = ["KSERVE_SERVICE", "SPLIT_SERVICE", "BackgroundServer", "SplitServer"]

log = logging.getLogger("edgecloud.split")

_VERSION = "1"

SPLIT_SERVICE = spb.DESCRIPTOR.services_by_name["SplitService"].full_name
KSERVE_SERVICE = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

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
            await abort(context, exc, rpc="RunTail", log=log)
        for chunk in _wire.chunks(encoded, self._chunk):
            yield chunk
        yield spb.SplitChunk(
            done=spb.TailDone(compute_ms=(t2 - t1) * 1e3, codec_ms=(t1 - t0 + t3 - t2) * 1e3)
        )

    async def ProfileTails(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            model = self._store.get(request.model)
            repeats = max(1, min(int(request.repeats) or 5, 100))
            nodes: dict[str, float] = {}
            shapes: dict[str, tuple[int, ...]] = {}
            if request.per_node:
                feeds = _zeros_sample(model.partitioner, request.sample, self._max)
                nodes, values = await asyncio.to_thread(
                    model.partitioner.profile_nodes,
                    feeds,
                    repeats=repeats,
                    providers=model.providers,
                )
                shapes = {k: tuple(v.shape) for k, v in values.items()}
                shapes.update({k: tuple(v.shape) for k, v in feeds.items()})
            timings = await asyncio.to_thread(_profile_tails, model, repeats, shapes)
        except Exception as exc:  # noqa: BLE001 - see RunTail
            await abort(context, exc, rpc="ProfileTails", log=log)
        return spb.ProfileTailsResponse(
            model_sha256=model.partitioner.sha256,
            provider=model.provider,
            timings=[spb.TailTiming(cut=list(c), tail_ms=ms) for c, ms in timings],
            nodes=[spb.NodeTiming(node=n, ms=sec * 1e3) for n, sec in nodes.items()],
        )

    async def Ping(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        n = min(int(request.reply_bytes), self._max)
        return spb.PingReply(payload=b"\0" * n)


def _zeros_sample(p: Any, headers: Sequence[Any], max_bytes: int) -> dict[str, Any]:
    """Zero graph inputs of the shapes the device announced (its real input's shapes).

    Raises:
        InvalidRequestError: names that are not the graph's inputs, or a size over the limit.
    """
    got = {h.name: h for h in headers}
    if set(got) != set(p.inputs):
        raise InvalidRequestError(
            f"the sample names {sorted(got)}; the graph's inputs are {sorted(p.inputs)}"
        )
    feeds = {}
    for name, h in got.items():
        shape = tuple(int(d) for d in h.shape)
        dtype = np.dtype(p.tensor(name).dtype)
        if min(shape, default=1) < 0 or math.prod(shape) * dtype.itemsize > max_bytes:
            raise InvalidRequestError(f"sample input {name!r}: bad or oversized shape {shape}")
        value = np.zeros(shape, dtype=dtype)  # sized before it is allocated
        check_activation(p, name, value)
        feeds[name] = value
    return feeds


def _profile_tails(
    model: Any, repeats: int, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> list[tuple[tuple[str, ...], float]]:
    """Median tail time of every cut, on a zero activation (batch 1 unless ``shapes`` says)."""
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
            shape = (shapes or {}).get(name) or tuple(1 if d is None else d for d in info.shape)
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
            await abort(context, exc, rpc="ModelMetadata", log=log)

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
            await abort(context, exc, rpc="ModelInfer", log=log)
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

    def __init__(self, server: GrpcServer, store: ModelStore) -> None:
        self._server = server
        self.store = store
        self.port = server.port

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
        tls: TlsConfig | None = None,
        insecure: bool = False,
        auth: AuthConfig | None = None,
        interceptors: Sequence[aio.ServerInterceptor] = (),
    ) -> SplitServer:
        """Load the models and serve both services on ``host:port`` (0 picks a port).

        Args:
            tls: certificate and key (and ``client_ca`` for mTLS); None serves plain
                text, which a loopback host only may do.
            insecure: with a ``tls`` that has no certificate, serve plain text
                (``split.serve.insecure``) instead of failing.
            auth: bearer tokens every call must carry (health excepted); None or
                no tokens: no authentication.
            interceptors: more server interceptors (after auth).

        Raises:
            ConfigError: bad TLS settings, plain text off loopback, or the address
                cannot be bound.
            ModelNotFoundError, ModelIntegrityError: a model cannot be loaded.
        """
        # A KServe request carries a whole tensor in one message; leave room for headers.
        size = max(max_activation_bytes, chunk_bytes) + 1024 * 1024
        server = create_server(
            host=host,
            port=port,
            tls=tls,
            insecure=insecure or tls is None,
            section="split.serve",
            auth=auth,
            interceptors=interceptors,
            max_message_bytes=size,
        )
        store = await asyncio.to_thread(ModelStore, models, providers=providers, threads=threads)
        try:
            split = SplitServicer(
                store, max_activation_bytes=max_activation_bytes, chunk_bytes=chunk_bytes
            )
            server.add_service(
                SPLIT_SERVICE, partial(spb_grpc.add_SplitServiceServicer_to_server, split)
            )
            kserve = KServeServicer(store, max_bytes=max_activation_bytes)
            server.add_service(
                KSERVE_SERVICE,
                partial(kpb_grpc.add_GRPCInferenceServiceServicer_to_server, kserve),
            )
            await server.start()
        except BaseException:
            store.close()
            raise
        log.info("split service on %s:%d serving %s", host, server.port, store.names)
        return cls(server, store)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Health ``NOT_SERVING``, refuse new calls, give in-flight ones ``grace`` seconds."""
        await self._server.drain(grace)
        self.store.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


class BackgroundServer(Closing):
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
