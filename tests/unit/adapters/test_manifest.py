"""Manifest validation, safe file names, canonical bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.adapters._manifest import Manifest, check_adapter_id, check_file_name
from edgecloud.errors import AdapterFormatError

SHA = "ab" * 32


def _fields(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "adapter_id": "support-bot",
        "version": 3,
        "base_model_sha256": SHA,
        "base_architecture": "gemma3",
        "rank": 8,
        "alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "data": {"records": 5, "train": 4, "holdout": 1, "with_passages": True},
        "metrics": {"acc": 0.75},
        "canary": [{"prompt": "2+2?", "expect": "4"}],
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "files": {
            "adapter.gguf": {"sha256": SHA, "size": 10},
            "peft/a.json": {"sha256": SHA, "size": 1},
        },
    }
    return {**base, **over}


def test_canonical_bytes_are_sorted_compact_and_round_trip() -> None:
    m = Manifest(**_fields())
    data = m.to_json()
    assert b" " not in data and b"\n" not in data
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    again = Manifest.from_json(data)
    assert again == m
    assert again.to_json() == data


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../x", "a/../../x", "a\\b", "a//b", "", "./a", "a/", "c:evil", "a\x00b", ".."],
)
def test_unsafe_file_names_are_refused(name: str) -> None:
    with pytest.raises(AdapterFormatError):
        check_file_name(name)
    data = Manifest(**_fields()).model_dump(mode="json")
    data["files"][name] = {"sha256": SHA, "size": 1}
    with pytest.raises(AdapterFormatError):
        Manifest.from_json(json.dumps(data).encode())


@pytest.mark.parametrize("name", ["adapter.gguf", "peft/adapter_model.safetensors", "a.b-c_d"])
def test_safe_file_names_pass(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 65, "a b"])
def test_bad_adapter_ids(bad: str) -> None:
    with pytest.raises(AdapterFormatError):
        check_adapter_id(bad)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        json.dumps({**_fields(), "created_at": "2026-01-01T00:00:00Z", "extra": 1}).encode(),
        json.dumps({**_fields(), "created_at": "2026-01-01T00:00:00Z", "version": 0}).encode(),
        json.dumps(
            {**_fields(), "created_at": "2026-01-01T00:00:00Z", "schema_version": 2}
        ).encode(),
        json.dumps({**_fields(), "created_at": "2026-01-01T00:00:00Z", "files": {}}).encode(),
        json.dumps({**_fields(), "created_at": "x", "base_model_sha256": "zz"}).encode(),
    ],
)
def test_malformed_manifests_raise_format_error(data: bytes) -> None:
    with pytest.raises(AdapterFormatError):
        Manifest.from_json(data)


def test_non_finite_metrics_are_refused() -> None:
    with pytest.raises(ValueError):
        Manifest(**_fields(metrics={"acc": float("nan")}))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", ".", "/", "\\", ":", "\x00", " ", "é"]), max_size=12))
def test_accepted_names_never_leave_the_version_directory(name: str) -> None:
    import posixpath

    try:
        check_file_name(name)
    except AdapterFormatError:
        return
    joined = posixpath.normpath(posixpath.join("/root/v1/files", name))
    assert joined.startswith("/root/v1/files/")
    assert "\\" not in name and "\x00" not in name


def test_an_answer_memory_travels_in_the_calibration_and_refuses_broken_vectors() -> None:
    import numpy as np

    from edgecloud.adapters._manifest import AdapterCalibration, AnswerMemory

    memory = AnswerMemory.build("e", "Q: shared\n", np.eye(3, 4), ["22 kg", "red", "D-577"], 0.05)
    cal = AdapterCalibration(window=1, min_mean_logprob=-0.5, target_wrong_rate=0.03,
                             examples=10, memory=memory)  # fmt: skip
    m = Manifest.from_json(Manifest.model_validate(_fields(calibration=cal)).to_json())
    assert m.calibration is not None and m.calibration.memory is not None
    got = m.calibration.memory
    assert got.text("Q: shared\nQ: which code?") == "Q: which code?"
    assert got.consistent([0, 0, 1, 0], " D-577") and not got.consistent([0, 0, 1, 0], " D-156")
    assert got.consistent([0.7, 0.71, 0, 0], "red")  # both rows are nearest (within 0.05)
    with pytest.raises(ValueError, match="2 dimensions, the memory 4"):
        got.consistent([1.0, 0.0], "red")
    raw = memory.model_dump()
    for bad, why in (({"dim": 5}, "memory holds 12 numbers"), ({"vectors": "not base64!"}, "base64"),
                     ({"answers": ["a", "b"]}, "not 2 x 4")):  # fmt: skip
        fields = _fields(calibration={**cal.model_dump(), "memory": {**raw, **bad}})
        with pytest.raises(AdapterFormatError, match="memory"):
            Manifest.from_json(json.dumps(fields, default=str).encode())
        with pytest.raises(ValueError, match=why):
            AnswerMemory.model_validate({**raw, **bad})
