"""The desktop app's logic without a window: the few-shot prompt, the device's stream
and its ``edgecloud`` field, the transcript's badges and reasons, and the device list
(from real :class:`edgecloud.discovery.Discovered` records)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples/apps/desktop/src"))

from edgecloud_desktop.devices import (
    DeviceEntry,
    base_url,
    entries,
    keep_selection,
    manual_entry,
    merge,
)
from edgecloud_desktop.events import Delta, Final
from edgecloud_desktop.prompts import STOP, qa_prompt
from edgecloud_desktop.sse import StreamError, data_lines, decode
from edgecloud_desktop.transcript import Transcript

from edgecloud.discovery import (
    CLOUD_SERVICE_TYPE,
    DEVICE_SERVICE_TYPE,
    CloudAdvert,
    DeviceAdvert,
    Discovered,
)


def test_the_prompt_is_few_shot_qa_with_recent_history_on_one_line_each() -> None:
    history = [(f"q{i}", f"a{i}") for i in range(6)]
    prompt = qa_prompt("What is\nthe capital of Japan?", history, keep=2)
    lines = prompt.split("\n")
    assert lines[:2] == ["Q: What is the capital of France?", "A: Paris."]
    assert lines[-6:] == ["Q: q4", "A: a4", "Q: q5", "A: a5",
                          "Q: What is the capital of Japan?", "A:"]  # fmt: skip
    assert "q3" not in prompt and STOP == ("\n",)
    with pytest.raises(ValueError, match="empty"):
        qa_prompt("  \n ")


# What `edgecloud device serve` streams for /v1/completions (docs/http.md).
TOKEN = '{"choices":[{"index":0,"text":" Tok","finish_reason":null}],"edgecloud":{"source":"local","retracted":0}}'
HANDOFF = '{"choices":[{"index":0,"text":" Kyoto","finish_reason":null}],"edgecloud":{"source":"cloud","retracted":4}}'
LAST = (
    '{"choices":[{"index":0,"text":"","finish_reason":"stop"}],"edgecloud":{"source":"mixed",'
    '"route":{"policy":"confidence-window","reason":"mean logprob -1.92 over 8 tokens < -1.50",'
    '"escalated":true,"endpoint":"10.0.0.5:50051","fallback":null},"finish":"stop"}}'
)


def test_stream_events_become_deltas_and_a_final_with_the_route() -> None:
    lines = [
        ": keep-alive",
        f"data: {TOKEN}",
        "",
        f"data: {HANDOFF}",
        f"data: {LAST}",
        "data: [DONE]",
    ]
    events = [e for payload in data_lines(lines) for e in decode(payload)]
    assert events[:2] == [Delta(" Tok", "local", 0), Delta(" Kyoto", "cloud", 4)]
    final = events[2]
    assert isinstance(final, Final) and len(events) == 3
    assert (final.source, final.policy, final.escalated, final.endpoint) == (
        "mixed", "confidence-window", True, "10.0.0.5:50051"
    )  # fmt: skip
    assert final.reason is not None and "mean logprob" in final.reason


def test_a_device_without_cloud_sends_route_null() -> None:
    [final] = decode(
        '{"choices":[{"text":"","finish_reason":"length"}],"edgecloud":{"source":"local","route":null}}'
    )
    assert final == Final("local", "length")


def test_errors_in_the_stream_are_raised_with_the_devices_message() -> None:
    with pytest.raises(StreamError, match="cloud did not answer"):
        decode('{"error":{"message":"the cloud did not answer","type":"server_error"}}')
    with pytest.raises(StreamError, match="not JSON"):
        decode("{oops")


def test_the_transcript_applies_retractions_and_explains_the_route() -> None:
    transcript = Transcript()
    turn = transcript.ask("What is the old capital of Japan?")
    assert turn.badge == "…" and turn.why() == "answering…"
    for payload in (TOKEN, HANDOFF, LAST):
        for event in decode(payload):
            turn.apply(event)
    assert turn.answer == " Kyoto" and turn.retracted == 4 and turn.badge == "mixed"
    why = turn.why()
    assert why.startswith("escalated (confidence-window): mean logprob -1.92")
    assert "via 10.0.0.5:50051" in why and "4 characters taken back" in why
    assert transcript.history() == [("What is the old capital of Japan?", "Kyoto")]
    failed = transcript.ask("and now?")
    failed.fail("HTTP 401: invalid key")
    assert failed.badge == "error" and failed.why() == "HTTP 401: invalid key"
    assert len(transcript.history()) == 1  # failed turns are not sent as context
    assert "[mixed] Kyoto" in transcript.as_text()


def test_a_kept_local_answer_says_so() -> None:
    turn = Transcript().ask("2+2?")
    turn.apply(Delta("4", "local"))
    turn.apply(Final("local", "length", "confidence-window", "confident", False))
    assert turn.badge == "local"
    assert turn.why() == "kept on the device (confidence-window): confident [length]"


def _found(
    name: str, stype: str, addresses: tuple[str, ...], port: int, advert: object
) -> Discovered:
    return Discovered(f"{name}.{stype}", stype, addresses, port, None, advert)  # type: ignore[arg-type]


def test_device_entries_from_announcements() -> None:
    found = [
        _found(
            "robot",
            DEVICE_SERVICE_TYPE,
            ("fe80::1", "192.168.1.20"),
            8080,
            DeviceAdvert(model="gemma"),
        ),
        _found("lab", CLOUD_SERVICE_TYPE, ("192.168.1.5",), 50051, CloudAdvert()),
        _found(
            "v6only",
            DEVICE_SERVICE_TYPE,
            ("fd00::7",),
            9000,
            DeviceAdvert(path="/api/v1", tls=True),
        ),
    ]
    assert entries(found) == [
        DeviceEntry("robot", "http://192.168.1.20:8080/v1", "gemma"),
        DeviceEntry("v6only", "https://[fd00::7]:9000/api/v1", ""),
    ]
    assert entries(found)[0].label == "robot — gemma @ 192.168.1.20:8080"
    assert base_url("::1", 1) == "http://[::1]:1/v1"


def test_addresses_typed_by_hand() -> None:
    typed = manual_entry("10.0.0.7")
    assert typed == DeviceEntry("10.0.0.7:8080", "http://10.0.0.7:8080/v1", typed=True)
    assert typed.label == "http://10.0.0.7:8080/v1 (typed in)"
    assert manual_entry(" 10.0.0.7:9000 ").url == "http://10.0.0.7:9000/v1"
    assert manual_entry("https://robot.local:8443/v1/").url == "https://robot.local:8443/v1"
    assert manual_entry("[::1]:8080").url == "http://[::1]:8080/v1"
    for bad in ("", "ftp://x", "10.0.0.7:port"):
        with pytest.raises(ValueError):
            manual_entry(bad)


def test_a_refresh_keeps_the_chosen_device_while_it_is_announced() -> None:
    a, b = DeviceEntry("a", "http://10.0.0.1:8080/v1"), DeviceEntry("b", "http://10.0.0.2:8080/v1")
    assert keep_selection(b, [a, DeviceEntry("b2", b.url)]) == DeviceEntry("b2", b.url)
    assert keep_selection(b, [a]) == a
    assert keep_selection(None, []) is None


def test_addresses_typed_in_stay_across_refreshes_unless_found_announced() -> None:
    robot = DeviceEntry("robot", "http://10.0.0.7:8080/v1", "gemma")
    gone = DeviceEntry("gone", "http://10.0.0.9:8080/v1")
    typed, other = manual_entry("10.0.0.7"), manual_entry("10.0.0.8")
    assert merge([robot], [gone, typed, other]) == [robot, other]
