"""TXT records of edgecloud services: written within DNS's limits, read defensively."""

from __future__ import annotations

import pytest

from edgecloud.discovery import CloudAdvert, DeviceAdvert
from edgecloud.discovery._txt import MAX_ENTRY_BYTES, MAX_TXT_BYTES, decode_txt
from edgecloud.errors import DiscoveryError

FP = "ab" * 32


def as_zeroconf(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    """The TXT record as zeroconf hands it to a browser."""
    return {k.encode(): v.encode() for k, v in txt.items()}


def test_a_cloud_advert_round_trips_through_its_txt_record() -> None:
    advert = CloudAdvert(("inference", "adapters"), ("gemma-3-270m",),
                         (("default", 3), ("lab", None)), True, FP, 0.25)  # fmt: skip
    txt = advert.to_txt()
    assert txt["v"] == "1" and txt["tls"] == "1" and txt["fp"] == FP and txt["load"] == "0.25"
    assert txt["adapters"] == "default@3,lab"
    assert CloudAdvert.from_txt(as_zeroconf(txt)) == advert


def test_a_device_advert_round_trips() -> None:
    advert = DeviceAdvert("/v1", "gemma3-270m-q4", tls=False)
    assert DeviceAdvert.from_txt(as_zeroconf(advert.to_txt())) == advert


def test_writing_trims_long_lists_to_fit_dns_limits() -> None:
    models = tuple(f"org/a-rather-long-model-name-{i:02d}" for i in range(40))
    txt = CloudAdvert(models=models, tls=False).to_txt()
    assert all(len(k) + 1 + len(v.encode()) <= MAX_ENTRY_BYTES for k, v in txt.items())
    kept = txt["models"].split(",")
    assert 0 < len(kept) < 40 and kept == list(models[: len(kept)])
    # commas and control characters cannot smuggle extra entries into a list
    sneaky = CloudAdvert(models=("a,b\x00c",), tls=False).to_txt()
    assert CloudAdvert.from_txt(as_zeroconf(sneaky)).models == ("abc",)


@pytest.mark.parametrize(
    ("txt", "why"),
    [
        ({}, "no TXT record"),
        ({"kinds": "inference", "tls": "0"}, "protocol version None"),
        ({"v": "2", "kinds": "inference", "tls": "0"}, "protocol version '2'"),
        ({"v": "1", "tls": "0"}, "'kinds' is missing"),
        ({"v": "1", "kinds": "Inference!", "tls": "0"}, "'kinds' is missing or malformed"),
        ({"v": "1", "kinds": "inference"}, "TLS but no certificate fingerprint"),
        ({"v": "1", "kinds": "inference", "tls": "yes"}, "not 0 or 1"),
        ({"v": "1", "kinds": "inference", "tls": "1", "fp": "zz" * 32}, "not a SHA-256"),
        ({"v": "1", "kinds": "inference", "tls": "0", "load": "nan"}, "out of range"),
        ({"v": "1", "kinds": "inference", "tls": "0", "load": "-1"}, "out of range"),
        ({"v": "1", "kinds": "inference", "tls": "0", "load": "1e309"}, "out of range"),
        ({"v": "1", "kinds": "inference", "tls": "0", "load": "lots"}, "'load' is 'lots'"),
        ({"v": "1", "kinds": "inference", "tls": "0", "adapters": "a@b@c"}, "malformed"),
        ({"v": "1", "kinds": "inference", "tls": "0", "models": "m" * 200}, "limit 128"),
        ({"v": "1", "kinds": ",".join(["k"] * 17), "tls": "0"}, "17 entries"),
    ],
)
def test_malformed_cloud_records_are_refused_with_a_reason(txt: dict[str, str], why: str) -> None:
    with pytest.raises(DiscoveryError, match=why.replace("(", r"\(")):
        CloudAdvert.from_txt(as_zeroconf(txt))


def test_raw_bytes_that_are_not_text_or_too_large_are_refused() -> None:
    with pytest.raises(DiscoveryError, match="not text"):
        decode_txt({b"v": b"\xff\xfe"})
    with pytest.raises(DiscoveryError, match="control characters"):
        decode_txt({b"v": b"1\x07"})
    with pytest.raises(DiscoveryError, match="limit 255"):
        decode_txt({b"models": b"m" * 300})
    flood = {f"k{i}".encode(): b"x" * 200 for i in range(8)}
    with pytest.raises(DiscoveryError, match=f"over {MAX_TXT_BYTES} bytes"):
        decode_txt(flood)


def test_unknown_keys_are_ignored_and_keys_are_case_insensitive() -> None:
    advert = CloudAdvert.from_txt(
        {
            b"V": b"1",
            b"Kinds": b"inference,split",
            b"TLS": b"0",
            b"future-key": b"whatever",
            b"flag": None,
        }
    )
    assert advert.kinds == ("inference", "split") and advert.tls is False and advert.load is None


def test_device_records_check_their_path() -> None:
    with pytest.raises(DiscoveryError, match="'path'"):
        DeviceAdvert.from_txt({b"v": b"1", b"tls": b"0", b"path": b"v1; rm -rf"})
