from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgecloud.errors import ActivationError
from edgecloud.split import decode, encode

LIMIT = 1 << 24


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_float32_is_lossless_and_float16_close(compression: str) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    t32 = encode("a", x, "float32", compression)  # type: ignore[arg-type]
    np.testing.assert_array_equal(decode(t32, max_bytes=LIMIT), x)
    t16 = encode("a", x, "float16", compression)  # type: ignore[arg-type]
    y = decode(t16, max_bytes=LIMIT)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-3)
    if compression == "none":
        assert len(t16.payload) == x.size * 2


@settings(max_examples=60, deadline=None)
@example(np.array([1e-45], dtype=np.float32))  # a subnormal range: its step underflows float32
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
        elements=st.floats(-1e4, 1e4, width=32),
    )
)
def test_int8_error_is_at_most_half_a_step(x: np.ndarray) -> None:
    t = encode("a", x, "int8")
    y = decode(t, max_bytes=LIMIT)
    assert len(t.payload) == x.size
    assert np.all(np.abs(y - x) <= t.scale * 0.5 + 1e-6 * max(1.0, float(np.abs(x).max(initial=0))))


def test_int8_keeps_zero_exact_after_relu() -> None:
    x = np.maximum(np.random.default_rng(1).standard_normal(1000), 0).astype(np.float32)
    y = decode(encode("a", x, "int8"), max_bytes=LIMIT)
    assert np.all(y[x == 0] == 0)


def test_non_float_tensors_travel_raw() -> None:
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    t = encode("i", x, "int8", "zstd")
    assert t.encoding == "raw"
    np.testing.assert_array_equal(decode(t, max_bytes=LIMIT), x)


def test_int8_refuses_non_finite_values() -> None:
    with pytest.raises(ActivationError, match="NaN or infinite"):
        encode("a", np.array([1.0, np.nan], dtype=np.float32), "int8")


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_truncated_and_padded_payloads_are_refused(compression: str) -> None:
    t = encode("a", np.ones((4, 4), np.float32), "float16", compression)  # type: ignore[arg-type]
    with pytest.raises(ActivationError, match=r"truncated|corrupt"):
        decode(dataclasses.replace(t, payload=t.payload[:-2]), max_bytes=LIMIT)
    if compression == "none":
        with pytest.raises(ActivationError, match="truncated or padded"):
            decode(dataclasses.replace(t, payload=t.payload + b"\0\0"), max_bytes=LIMIT)


def test_zstd_bomb_is_not_decompressed_beyond_the_header() -> None:
    import zstandard

    t = encode("a", np.ones((4,), np.float32), "float32")
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    with pytest.raises(ActivationError, match="truncated or padded"):
        decode(dataclasses.replace(t, compression="zstd", payload=bomb), max_bytes=LIMIT)


def test_activation_over_the_limit_is_refused_before_decoding() -> None:
    t = encode("a", np.ones((64, 64), np.float32), "float32")
    with pytest.raises(ActivationError, match="over the limit"):
        decode(t, max_bytes=1000)
    with pytest.raises(ActivationError, match="negative"):
        decode(dataclasses.replace(t, shape=(-1, 4)), max_bytes=LIMIT)


def test_a_scalar_keeps_its_empty_shape() -> None:
    # shape arithmetic in exported graphs crosses cuts as 0-d int64 tensors
    t = encode("n", np.array(7, np.int64), "float16")
    assert t.shape == () and t.encoding == "raw"
    out = decode(t, max_bytes=64)
    assert out.shape == () and int(out) == 7
