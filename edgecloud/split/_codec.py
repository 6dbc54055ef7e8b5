"""Activation codecs: what crosses the wire at a cut.

float16 halves the bytes with a relative error of about 1e-3; int8 quarters
them with a per-tensor affine map (scale and zero point from the tensor's own
min and max, so post-ReLU tensors use the whole range); zstd then removes what
is left of the redundancy (ReLU zeros compress well). Decoding checks every
length against the header before it allocates, so a truncated or oversized
activation is an :class:`~edgecloud.errors.ActivationError`, never a reshape
failure or a memory blow-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgecloud.errors import ActivationError

__all__ = [
    "Compression",
    "EncodedTensor",
    "Encoding",
    "decode",
    "encode",
    "iter_chunks",
]

Encoding = Literal["float32", "float16", "int8", "raw"]
Compression = Literal["none", "zstd"]

_WIRE_DTYPE: dict[str, str] = {"float32": "<f4", "float16": "<f2", "int8": "i1"}
_FLOATS = ("float16", "float32", "float64")


@dataclass(frozen=True)
class EncodedTensor:
    """An activation as it travels: header fields plus the (compressed) payload."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: Encoding
    compression: Compression
    payload: bytes
    scale: float = 1.0
    zero_point: int = 0

    @property
    def raw_nbytes(self) -> int:
        """Bytes after decompression, before decoding (what the header promises)."""
        return _wire_nbytes(self.dtype, self.shape, self.encoding)


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _wire_nbytes(dtype: str, shape: tuple[int, ...], encoding: Encoding) -> int:
    if any(d < 0 for d in shape):
        raise ActivationError(f"negative dimension in shape {shape}")
    if encoding == "raw":
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError as exc:
            raise ActivationError(f"unknown dtype {dtype!r}") from exc
    else:
        itemsize = np.dtype(_WIRE_DTYPE[encoding]).itemsize
    return _count(shape) * itemsize


def encode(
    name: str,
    array: npt.NDArray[Any],
    encoding: Encoding = "float32",
    compression: Compression = "none",
    *,
    level: int = 3,
) -> EncodedTensor:
    """Encode one activation.

    Non-float tensors (indices, masks) are always sent ``raw``: quantizing them
    would change their meaning.

    Raises:
        ActivationError: int8 of a tensor with NaN or infinite values.
    """
    # not np.ascontiguousarray: it turns a scalar (a shape element, shape ()) into shape (1,)
    a = np.asarray(array, order="C")
    dtype = str(a.dtype)
    if dtype not in _FLOATS:
        encoding = "raw"
    scale, zero_point = 1.0, 0
    if encoding == "raw":
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    elif encoding in ("float32", "float16"):
        data = a.astype(_WIRE_DTYPE[encoding], copy=False).tobytes()
    else:
        if a.size and not np.isfinite(a).all():
            raise ActivationError(f"activation {name!r} has NaN or infinite values; int8 cannot")
        lo = float(min(a.min(initial=0.0), 0.0)) if a.size else 0.0
        hi = float(max(a.max(initial=0.0), 0.0)) if a.size else 0.0
        # Including 0 in the range makes zero exact, which keeps ReLU sparsity intact.
        # A range so small that its step is no normal float32 (subnormal activations)
        # would divide by zero in float32; such values are zero at this precision.
        step = (hi - lo) / 255.0
        scale = step if step >= float(np.finfo(np.float32).tiny) else 1.0
        zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
        q = np.clip(np.rint(a / scale) + zero_point, -128, 127).astype(np.int8)
        data = q.tobytes()
    if compression == "zstd":
        import zstandard

        data = zstandard.ZstdCompressor(level=level).compress(data)
    return EncodedTensor(
        name, dtype, tuple(int(d) for d in a.shape), encoding, compression, data, scale, zero_point
    )


def decode(t: EncodedTensor, *, max_bytes: int) -> np.ndarray[Any, Any]:
    """Decode one activation, refusing anything over ``max_bytes`` decoded.

    Raises:
        ActivationError: truncated or oversized payload, corrupt zstd frame,
            or a header that does not describe a tensor.
    """
    wire = _wire_nbytes(t.dtype, t.shape, t.encoding)
    try:
        out_itemsize = np.dtype(t.dtype).itemsize
    except TypeError as exc:
        raise ActivationError(f"activation {t.name!r}: unknown dtype {t.dtype!r}") from exc
    decoded = _count(t.shape) * out_itemsize
    if max(wire, decoded) > max_bytes:
        raise ActivationError(
            f"activation {t.name!r} of shape {t.shape} is {max(wire, decoded)} bytes, "
            f"over the limit of {max_bytes}"
        )
    data = t.payload
    if t.compression == "zstd":
        import zstandard

        try:
            # Read at most one byte more than the header allows: a frame that claims
            # (or holds) a huge content size cannot make us allocate it.
            with zstandard.ZstdDecompressor().stream_reader(data) as reader:
                data = reader.read(wire + 1)
        except zstandard.ZstdError as exc:
            raise ActivationError(f"activation {t.name!r}: corrupt zstd payload: {exc}") from exc
    if len(data) != wire:
        raise ActivationError(
            f"activation {t.name!r} is truncated or padded: {len(data)} bytes, "
            f"its header says {t.shape} {t.encoding} = {wire} bytes"
        )
    if t.encoding == "raw":
        return np.frombuffer(data, dtype=np.dtype(t.dtype).newbyteorder("<")).reshape(t.shape)
    if t.encoding in ("float32", "float16"):
        arr = np.frombuffer(data, dtype=_WIRE_DTYPE[t.encoding]).reshape(t.shape)
    else:
        q = np.frombuffer(data, dtype=np.int8).reshape(t.shape)
        arr = (q.astype(np.float32) - np.float32(t.zero_point)) * np.float32(t.scale)
    return arr.astype(t.dtype, copy=False)


def iter_chunks(payload: bytes, chunk_bytes: int) -> Iterator[bytes]:
    """Slices of ``payload`` of at most ``chunk_bytes`` (none for an empty payload)."""
    view = memoryview(payload)
    for i in range(0, len(payload), chunk_bytes):
        yield bytes(view[i : i + chunk_bytes])
