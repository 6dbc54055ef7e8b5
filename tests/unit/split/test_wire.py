from __future__ import annotations

import numpy as np
import pytest

from edgecloud._proto.v1 import split_pb2 as spb
from edgecloud.errors import ActivationError
from edgecloud.split import decode, encode
from edgecloud.split._wire import Assembler, chunks


def test_chunked_round_trip_of_several_tensors() -> None:
    xs = {
        "a": np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32),
        "b": np.arange(10, dtype=np.int64),
    }
    msgs = list(chunks([encode(n, v, "float32") for n, v in xs.items()], 1024))
    assert sum(m.WhichOneof("part") == "data" for m in msgs) == 12 + 1  # 12000 B + 80 B
    assert all(len(m.data) <= 1024 for m in msgs)
    a = Assembler(1 << 20)
    for m in msgs:
        a.feed(m)
    got = {t.name: decode(t, max_bytes=1 << 20) for t in a.finish()}
    np.testing.assert_array_equal(got["a"], xs["a"])
    np.testing.assert_array_equal(got["b"], xs["b"])


def test_a_stream_that_stops_early_is_truncated() -> None:
    msgs = list(chunks([encode("a", np.ones(1000, np.float32), "float32")], 512))
    a = Assembler(1 << 20)
    for m in msgs[:-1]:
        a.feed(m)
    with pytest.raises(ActivationError, match="truncated: 3584 of 4000"):
        a.finish()


def test_more_data_than_announced_and_data_without_header() -> None:
    a = Assembler(1 << 20)
    with pytest.raises(ActivationError, match="before its tensor header"):
        a.feed(spb.SplitChunk(data=b"xx"))
    a = Assembler(1 << 20)
    with pytest.raises(ActivationError, match="unknown encoding"):
        a.feed(spb.SplitChunk(tensor=spb.TensorHeader(name="a", payload_bytes=3)))
    a = Assembler(1 << 20)
    header = spb.TensorHeader(name="a", payload_bytes=3, encoding=spb.ACTIVATION_ENCODING_FLOAT32)
    a.feed(spb.SplitChunk(tensor=header))
    with pytest.raises(ActivationError, match="more than the 3 bytes"):
        a.feed(spb.SplitChunk(data=b"xxxx"))


def test_an_oversized_tensor_is_refused_at_its_header() -> None:
    a = Assembler(1000)
    with pytest.raises(ActivationError, match="over the limit of 1000"):
        a.feed(spb.SplitChunk(tensor=spb.TensorHeader(name="a", payload_bytes=1001)))
