"""Activations <-> ``SplitChunk`` streams: a header per tensor, then its payload in chunks.

The header states the exact payload length, so the receiver can refuse an
oversized tensor before buffering it and detect a stream that ends early.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from edgecloud._proto.v1 import split_pb2 as spb
from edgecloud.errors import ActivationError
from edgecloud.split._codec import Compression, EncodedTensor, Encoding, iter_chunks

__all__ = ["ENCODING_NAMES", "ENCODING_VALUES", "Assembler", "chunks", "receive"]

ENCODING_VALUES: dict[str, Any] = {
    "float32": spb.ACTIVATION_ENCODING_FLOAT32,
    "float16": spb.ACTIVATION_ENCODING_FLOAT16,
    "int8": spb.ACTIVATION_ENCODING_INT8,
    "raw": spb.ACTIVATION_ENCODING_RAW,
}
ENCODING_NAMES: dict[int, Encoding] = {
    spb.ACTIVATION_ENCODING_FLOAT32: "float32",
    spb.ACTIVATION_ENCODING_FLOAT16: "float16",
    spb.ACTIVATION_ENCODING_INT8: "int8",
    spb.ACTIVATION_ENCODING_RAW: "raw",
}


def chunks(tensors: Iterable[EncodedTensor], chunk_bytes: int) -> Iterator[Any]:
    """``SplitChunk`` messages for ``tensors``: header, then data of at most ``chunk_bytes``."""
    for t in tensors:
        yield spb.SplitChunk(
            tensor=spb.TensorHeader(
                name=t.name,
                dtype=t.dtype,
                shape=list(t.shape),
                encoding=ENCODING_VALUES[t.encoding],
                scale=t.scale,
                zero_point=t.zero_point,
                compression=(
                    spb.COMPRESSION_ZSTD if t.compression == "zstd" else spb.COMPRESSION_NONE
                ),
                payload_bytes=len(t.payload),
            )
        )
        for piece in iter_chunks(t.payload, chunk_bytes):
            yield spb.SplitChunk(data=piece)


class Assembler:
    """Collects ``SplitChunk`` messages back into tensors, checking every length.

    Args:
        max_bytes: largest payload accepted for one tensor (compressed or not,
            the decoded size is checked again by the codec).
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self.start: Any = None
        self.done: Any = None
        self.tensors: list[EncodedTensor] = []
        self._header: Any = None
        self._buf = bytearray()

    def feed(self, chunk: Any) -> None:
        """Take one message.

        Raises:
            ActivationError: data without a header, more data than announced,
                an oversized tensor, or a header before the previous tensor ended.
        """
        part = chunk.WhichOneof("part")
        if part == "data":
            if self._header is None:
                raise ActivationError("activation data arrived before its tensor header")
            self._buf += chunk.data
            if len(self._buf) > self._header.payload_bytes:
                raise ActivationError(
                    f"activation {self._header.name!r} sent more than the "
                    f"{self._header.payload_bytes} bytes its header announced"
                )
        else:
            self._close_tensor()
            if part == "tensor":
                h = chunk.tensor
                if h.payload_bytes > self._max:
                    raise ActivationError(
                        f"activation {h.name!r} is {h.payload_bytes} bytes on the wire, "
                        f"over the limit of {self._max}"
                    )
                if h.encoding not in ENCODING_NAMES:
                    raise ActivationError(f"activation {h.name!r}: unknown encoding {h.encoding}")
                self._header = h
                self._buf = bytearray()
            elif part == "start":
                if self.start is not None or self.tensors:
                    raise ActivationError("TailStart must come first, once")
                self.start = chunk.start
            elif part == "done":
                self.done = chunk.done
        self._check_complete_early()

    def _check_complete_early(self) -> None:
        if self._header is not None and len(self._buf) == self._header.payload_bytes:
            self._close_tensor()

    def _close_tensor(self) -> None:
        h = self._header
        if h is None:
            return
        if len(self._buf) != h.payload_bytes:
            raise ActivationError(
                f"activation {h.name!r} is truncated: {len(self._buf)} of "
                f"{h.payload_bytes} bytes arrived"
            )
        compression: Compression = "zstd" if h.compression == spb.COMPRESSION_ZSTD else "none"
        self.tensors.append(
            EncodedTensor(
                name=h.name,
                dtype=h.dtype,
                shape=tuple(int(d) for d in h.shape),
                encoding=ENCODING_NAMES[h.encoding],
                compression=compression,
                payload=bytes(self._buf),
                scale=h.scale,
                zero_point=h.zero_point,
            )
        )
        self._header = None
        self._buf = bytearray()

    def finish(self) -> list[EncodedTensor]:
        """The tensors, after the stream ended.

        Raises:
            ActivationError: the last tensor is incomplete.
        """
        self._close_tensor()
        return self.tensors


async def receive(stream: AsyncIterator[Any], *, max_bytes: int) -> tuple[Any, list[EncodedTensor]]:
    """Read a whole request stream: its ``TailStart`` (or None) and its tensors."""
    a = Assembler(max_bytes)
    async for chunk in stream:
        a.feed(chunk)
    return a.start, a.finish()
