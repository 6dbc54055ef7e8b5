"""Device side of the wire: the split client and the emulated-link layer for benchmarks.

The channel comes from :func:`edgecloud.transport.create_channel` (TLS, token,
sizes) and failed calls leave through :func:`edgecloud.transport.error_from_rpc`,
as for the cloud inference client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from edgecloud._proto.v1 import split_pb2 as spb
from edgecloud._proto.v1 import split_pb2_grpc as spb_grpc
from edgecloud.common.lifecycle import Closing
from edgecloud.errors import EdgeCloudError
from edgecloud.split import _wire
from edgecloud.split._codec import Compression, Encoding, decode, encode
from edgecloud.transport._channel import create_channel
from edgecloud.transport._status import error_from_rpc

__all__ = ["EmulatedLink", "SplitClient", "TailResult"]


@dataclass(frozen=True)
class EmulatedLink:
    """A slow link on top of loopback: each message waits ``bytes / bandwidth``,
    and each direction of a call waits ``rtt / 2`` once.

    Args:
        bandwidth_bps: bits per second, each direction.
        rtt_s: round-trip time in seconds.
    """

    bandwidth_bps: float
    rtt_s: float = 0.02

    def serial_s(self, nbytes: int) -> float:
        return nbytes * 8 / self.bandwidth_bps


class _Throttle(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """The delay/throttle layer: sleeps around real gRPC sends as the link would.

    Each direction is one wire: concurrent calls (pipelined frames) take turns
    serializing their bytes, while the propagation delay (RTT/2) overlaps, as on
    a real link.
    """

    def __init__(self, link: EmulatedLink) -> None:
        self.link = link
        self._up = threading.Lock()
        self._down = threading.Lock()

    @staticmethod
    def _send(wire: threading.Lock, seconds: float) -> None:
        with wire:
            time.sleep(seconds)

    def _slow(self, messages: Iterator[Any], wire: threading.Lock) -> Iterator[Any]:
        link = self.link  # one call sees one link, even if it is changed meanwhile
        first = True
        for m in messages:
            if first:
                time.sleep(link.rtt_s / 2)
                first = False
            self._send(wire, link.serial_s(m.ByteSize()))
            yield m

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        link = self.link
        time.sleep(link.rtt_s / 2)
        self._send(self._up, link.serial_s(request.ByteSize()))
        call = continuation(details, request)
        response = call.result()  # raises the RpcError of a failed call
        time.sleep(link.rtt_s / 2)
        self._send(self._down, link.serial_s(response.ByteSize()))
        return call

    def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return self._slow(continuation(details, self._slow(request_iterator, self._up)), self._down)


@dataclass(frozen=True)
class TailResult:
    """Outputs of a remote tail and where the time went."""

    outputs: dict[str, np.ndarray[Any, Any]]
    wall_s: float
    compute_s: float
    codec_s: float
    up_bytes: int
    down_bytes: int

    @property
    def wire_s(self) -> float:
        """Wall time minus what the cloud spent computing: the link's share."""
        return max(self.wall_s - self.compute_s - self.codec_s, 0.0)


class SplitClient(Closing):
    """gRPC client of a cloud ``SplitService``.

    Args:
        address: ``host:port``.
        link: emulate a slower link (benchmarks); None sends at loopback speed.
        chunk_bytes: largest data message.
        max_activation_bytes: largest output accepted back.
        timeout_s: deadline of each call.
        token: this device's bearer token, for a service with ``split.serve.auth``.
        tls: use TLS. The default, False, is plain text, which only a loopback
            ``address`` accepts (the split service's tests and benchmarks run there);
            any other address needs ``tls=True``.
        root_certificates: PEM CA (bytes or a file) to trust instead of the system roots.
        client_cert, client_key: PEM pair (bytes or files) for mTLS.

    Raises:
        ConfigError: plain text to a non-loopback address, or bad TLS material.
    """

    def __init__(
        self,
        address: str,
        *,
        link: EmulatedLink | None = None,
        chunk_bytes: int = 256 * 1024,
        max_activation_bytes: int = 64 * 1024 * 1024,
        timeout_s: float = 30.0,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | Path | None = None,
        client_cert: bytes | Path | None = None,
        client_key: bytes | Path | None = None,
    ) -> None:
        self.address = address
        self.link = link
        self._chunk = chunk_bytes
        self._max = max_activation_bytes
        self._timeout = timeout_s
        self._tls = tls
        self._throttle = _Throttle(link) if link is not None else None
        self._channel = create_channel(
            address,
            aio=False,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            token=token,
            max_message_bytes=max(chunk_bytes, max_activation_bytes) + 1024 * 1024,
            interceptors=[self._throttle] if self._throttle is not None else (),
        )
        self._stub = spb_grpc.SplitServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def set_link(self, link: EmulatedLink) -> None:
        """Change the emulated link (benchmarks of a link that changes under a running model).

        Raises:
            ValueError: this client was made without an emulated link.
        """
        if self._throttle is None:
            raise ValueError("this SplitClient was made without an emulated link")
        self._throttle.link = link
        self.link = link

    def run_tail(
        self,
        model: str,
        cut: Sequence[str],
        activations: Mapping[str, np.ndarray[Any, Any]],
        *,
        model_sha256: str = "",
        encoding: Encoding = "float16",
        compression: Compression = "none",
        output_encoding: Encoding = "float32",
    ) -> TailResult:
        """Send the activations at ``cut`` and get the graph outputs back.

        Raises:
            UnknownModelError: the cloud has no such model.
            InvalidRequestError: the cloud refused the cut or an activation.
            TransportError: the cloud is unreachable or failed.
        """
        encoded = [encode(n, activations[n], encoding, compression) for n in cut]
        up = sum(len(t.payload) for t in encoded)
        start = spb.TailStart(
            model=model,
            model_sha256=model_sha256,
            cut=list(cut),
            output_encoding=_wire.ENCODING_VALUES[output_encoding],
        )

        def requests() -> Iterator[Any]:
            yield spb.SplitChunk(start=start)
            yield from _wire.chunks(encoded, self._chunk)

        assembler = _wire.Assembler(self._max)
        t0 = time.perf_counter()
        try:
            for chunk in self._stub.RunTail(requests(), timeout=self._timeout):
                assembler.feed(chunk)
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        wall = time.perf_counter() - t0
        tensors = assembler.finish()
        outputs = {t.name: decode(t, max_bytes=self._max) for t in tensors}
        done = assembler.done
        compute = done.compute_ms / 1e3 if done is not None else 0.0
        codec = done.codec_ms / 1e3 if done is not None else 0.0
        down = sum(len(t.payload) for t in tensors)
        return TailResult(outputs, wall, compute, codec, up, down)

    def profile_tails(self, model: str, repeats: int = 5) -> tuple[str, str, dict[str, float]]:
        """``(model sha256, provider, {cut name: tail seconds})`` measured on the cloud."""
        try:
            r = self._stub.ProfileTails(
                spb.ProfileTailsRequest(model=model, repeats=repeats),
                timeout=self._timeout * 4,
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        return r.model_sha256, r.provider, {"+".join(t.cut): t.tail_ms / 1e3 for t in r.timings}

    def profile_nodes(
        self, model: str, sample: Mapping[str, np.ndarray[Any, Any]], repeats: int = 5
    ) -> tuple[str, dict[str, float], dict[str, float]]:
        """``(model sha256, {cut name: tail s}, {node: s})``, timed by the cloud at the
        shapes of ``sample`` (only its shapes and dtypes travel)."""
        headers = [
            spb.TensorHeader(name=n, dtype=str(v.dtype), shape=list(v.shape))
            for n, v in sample.items()
        ]
        try:
            r = self._stub.ProfileTails(
                spb.ProfileTailsRequest(
                    model=model, repeats=repeats, per_node=True, sample=headers
                ),
                timeout=self._timeout * 4,
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        tails = {"+".join(t.cut): t.tail_ms / 1e3 for t in r.timings}
        return r.model_sha256, tails, {t.node: t.ms / 1e3 for t in r.nodes}

    def ping(self, payload_bytes: int = 0, reply_bytes: int = 0) -> float:
        """Seconds for one round trip carrying these payloads."""
        t0 = time.perf_counter()
        try:
            self._stub.Ping(
                spb.PingRequest(payload=b"\0" * payload_bytes, reply_bytes=reply_bytes),
                timeout=self._timeout,
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        return time.perf_counter() - t0

    def _error(self, exc: grpc.RpcError) -> EdgeCloudError:
        return error_from_rpc(exc, self.address, plaintext=not self._tls)

    def close(self) -> None:
        self._channel.close()
