"""The privacy policy's maintained detectors (detect-secrets, presidio) and their fallback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgecloud.config import RouterConfig
from edgecloud.errors import ConfigError
from edgecloud.router import PrivacyDetectors, PrivacyPolicy, RequestSignals, route_request

DATA = Path(__file__).parents[3] / "bench" / "data"

# one line per kind the built-in patterns let through before the detectors
SENSITIVE = [
    ("my AWS key is AKIAIOSFODNN7EXAMPLE, is it leaked?", "aws_access_key"),
    ('aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"', "secret_keyword"),
    ("use sk-proj-abc123DEF456ghi789JKL012mno345PQR678 for the call", "api_key"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ0123456789 expired", "github_token"),
    ("-----BEGIN RSA PRIVATE KEY----- MIIEpAIBAAKCAQEA", "private_key"),
    ("password: hunter2", "password"),
    ("passwd=Tr0ub4dor&3", "password"),
    ("my password is hunter2, is it strong?", "password"),
    ("ssh into 10.0.0.5 and check the logs", "ip_address"),
    ("ping fe80::1ff:fe23:4567:890a", "ip_address"),
    ("I was born on 14/03/1987, what is my star sign?", "date_of_birth"),
    ("I was born March 3, 1985", "date_of_birth"),
    ("DOB: 1990-05-23", "date_of_birth"),
    ("send it to 221B Baker Street, London", "street_address"),
    ("I live at 1600 Pennsylvania Avenue NW", "street_address"),
    ("Hauptstraße 5, Berlin", "street_address"),
]

# look like the kinds above, are not
ORDINARY = [
    "What makes a password strong?",
    "The password is case-sensitive.",
    "Password: what makes a good one?",
    "What is the token limit of this model?",
    "When was Mozart born?",
    "What happened on July 4, 1776?",
    "Kestrel runs 5 hours on the way home",
    "Tell me about Fifth Avenue in New York",
    "pin the note to the board",
    "What is 2.7 m/s in km/h?",
    "Is sk-learn the same as scikit-learn?",
]


@pytest.fixture(scope="module")
def policy() -> PrivacyPolicy:
    pytest.importorskip(
        "detect_secrets", reason="detect-secrets is not installed (edgecloud[privacy])"
    )
    pytest.importorskip(
        "presidio_analyzer", reason="presidio-analyzer is not installed (edgecloud[privacy])"
    )
    return PrivacyPolicy(detectors=PrivacyDetectors(strict=True))


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> PrivacyDetectors:
    """The detectors of a device without the ``privacy`` extra."""
    monkeypatch.setitem(sys.modules, "detect_secrets", None)  # import fails
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)
    return PrivacyDetectors()


@pytest.mark.parametrize("text,kind", SENSITIVE)
def test_each_kind_stays_on_the_device_even_when_cloud_is_forced(
    policy: PrivacyPolicy, text: str, kind: str
) -> None:
    s = RequestSignals(text, prompt_tokens=10, local_context=2048, forced="cloud",
                       healthy_endpoints=1)  # fmt: skip
    d = route_request([policy], s)
    assert (d.route, d.policy, d.private) == ("local", "privacy", True)
    assert kind in str(d.signals["kinds"]).split(",")


@pytest.mark.parametrize("text", ORDINARY)
def test_lookalikes_are_not_flagged(policy: PrivacyPolicy, text: str) -> None:
    assert policy.matches(text) == []


def test_no_false_alarm_on_the_project_question_sets(policy: PrivacyPolicy) -> None:
    prompts = [
        json.loads(x)["question"] for x in (DATA / "router_eval.jsonl").read_text().splitlines()
    ]
    prompts += (DATA / "general_traffic.txt").read_text().split("\n")
    for name in ("fleet_facts.json", "greenhouse_facts.json"):
        prompts += [p for f in json.loads((DATA / name).read_text()) for p in f["phrasings"]]
    assert len(prompts) > 600
    assert {p: policy.matches(p) for p in prompts if policy.matches(p)} == {}


def test_entities_and_detectors_are_chosen(policy: PrivacyPolicy) -> None:
    only_addresses = PrivacyDetectors(["pii"], entities=["STREET_ADDRESS"], strict=True)
    assert only_addresses.matches("42 Elm Street, at 10.0.0.5") == ["street_address"]
    assert only_addresses.matches("key AKIAIOSFODNN7EXAMPLE") == []
    # presidio's other pattern recognizers can be named too
    assert PrivacyDetectors(["pii"], entities=["UK_NHS"]).matches("NHS 401 023 2137") == ["uk_nhs"]
    with pytest.raises(ConfigError, match="unknown privacy detector"):
        PrivacyDetectors(["telepathy"])
    with pytest.raises(ValueError, match="privacy_detectors"):
        RouterConfig(privacy_detectors=["telepathy"])  # type: ignore[list-item]


# the fallback patterns know IPv4 only
@pytest.mark.parametrize("text,kind", [(t, k) for t, k in SENSITIVE if "fe80" not in t])
def test_fallback_without_the_extra_still_catches_the_common_kinds(
    fallback: PrivacyDetectors, text: str, kind: str
) -> None:
    assert fallback.fallback == ["secrets", "pii"]
    assert kind in fallback.matches(text)


def test_fallback_has_no_false_alarms(fallback: PrivacyDetectors) -> None:
    assert [t for t in ORDINARY if fallback.matches(t)] == []


def test_strict_names_the_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)
    with pytest.raises(ConfigError, match=r"presidio-analyzer.*edgecloud\[privacy\]"):
        PrivacyDetectors(["pii"], strict=True)
