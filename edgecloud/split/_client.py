"""Device side of the wire: the split client and the emulated-link layer for benchmarks."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from edgecloud._proto.v1 import split_pb2 as spb
from edgecloud._proto.v1 import split_pb2_grpc as spb_grpc
from edgecloud.errors import EdgeCloudError, UnknownModelError
from edgecloud.split import _wire
from edgecloud.split._codec import Compression, Encoding, decode, encode

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
    """The delay/throttle layer: sleeps around real gRPC sends as the link would."""

    def __init__(self, link: EmulatedLink) -> None:
        self.link = link

    def _slow(self, messages: Iterator[Any]) -> Iterator[Any]:
        link = self.link  # one call sees one link, even if it is changed meanwhile
        first = True
        for m in messages:
            wait = link.serial_s(m.ByteSize())
            if first:
                wait += link.rtt_s / 2
                first = False
            time.sleep(wait)
            yield m

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        link = self.link
        time.sleep(link.rtt_s / 2 + link.serial_s(request.ByteSize()))
        call = continuation(details, request)
        response = call.result()  # raises the RpcError of a failed call
        time.sleep(link.rtt_s / 2 + link.serial_s(response.ByteSize()))
        return call

    def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return self._slow(continuation(details, self._slow(request_iterator)))


def _translate(exc: grpc.RpcError, target: str) -> EdgeCloudError:
    from edgecloud.transport import error_from_rpc

    code = exc.code() if callable(getattr(exc, "code", None)) else None
    if code == grpc.StatusCode.NOT_FOUND:
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        return UnknownModelError(details or f"unknown model ({target})")
    return error_from_rpc(exc, target)


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


class SplitClient:
    """gRPC client of a cloud ``SplitService``.

    Args:
        address: ``host:port``.
        link: emulate a slower link (benchmarks); None sends at loopback speed.
        chunk_bytes: largest data message.
        max_activation_bytes: largest output accepted back.
        timeout_s: deadline of each call.
        token: bearer token, for a service started with ``cloud.auth.tokens``.
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
    ) -> None:
        self.address = address
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.link = link
        self._chunk = chunk_bytes
        self._max = max_activation_bytes
        self._timeout = timeout_s
        size = max(chunk_bytes, max_activation_bytes) + 1024 * 1024
        channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
            ],
        )
        self._raw_channel = channel
        self._throttle: _Throttle | None = None
        if link is not None:
            self._throttle = _Throttle(link)
            channel = grpc.intercept_channel(channel, self._throttle)
        self._stub = spb_grpc.SplitServiceStub(channel)  # type: ignore[no-untyped-call]

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
            for chunk in self._stub.RunTail(
                requests(), timeout=self._timeout, metadata=self._metadata
            ):
                assembler.feed(chunk)
        except grpc.RpcError as exc:
            raise _translate(exc, self.address) from exc
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
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _translate(exc, self.address) from exc
        return r.model_sha256, r.provider, {"+".join(t.cut): t.tail_ms / 1e3 for t in r.timings}

    def ping(self, payload_bytes: int = 0, reply_bytes: int = 0) -> float:
        """Seconds for one round trip carrying these payloads."""
        t0 = time.perf_counter()
        try:
            self._stub.Ping(
                spb.PingRequest(payload=b"\0" * payload_bytes, reply_bytes=reply_bytes),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _translate(exc, self.address) from exc
        return time.perf_counter() - t0

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
