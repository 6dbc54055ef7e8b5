import pytest

from edgecloud.router import (
    BudgetPolicy,
    ConnectivityPolicy,
    ContextLengthPolicy,
    ForcedRoutePolicy,
    LearnedRouterPolicy,
    PrivacyPolicy,
    RequestSignals,
    route_request,
)

POLICIES = [
    ForcedRoutePolicy(),
    PrivacyPolicy(),
    ConnectivityPolicy(),
    BudgetPolicy(tokens_per_hour=1000, tokens_per_day=5000),
    ContextLengthPolicy(),
    LearnedRouterPolicy(threshold=0.6),
]


def sig(**kw: object) -> RequestSignals:
    base: dict[str, object] = dict(prompt_text="What is the capital of France?", prompt_tokens=10,
                                   local_context=2048, healthy_endpoints=1)  # fmt: skip
    base.update(kw)
    return RequestSignals(**base)  # type: ignore[arg-type]


def test_default_is_local_with_a_reason() -> None:
    d = route_request(POLICIES, sig())
    assert (d.route, d.policy) == ("local", "default")


@pytest.mark.parametrize(
    "kw,route,policy",
    [
        ({"forced": "cloud"}, "cloud", "forced"),
        ({"forced": "local", "prompt_tokens": 5000}, "local", "forced"),
        ({"healthy_endpoints": 0, "prompt_tokens": 5000}, "local", "connectivity"),
        ({"cloud_tokens_last_hour": 1000}, "local", "budget"),
        ({"cloud_tokens_last_day": 5000, "predicted_poor": 0.9}, "local", "budget"),
        ({"prompt_tokens": 2040}, "cloud", "context"),
        ({"predicted_poor": 0.61}, "cloud", "learned"),
        ({"predicted_poor": 0.59}, "local", "default"),
    ],
)
def test_policies_compose_in_order(kw: dict[str, object], route: str, policy: str) -> None:
    d = route_request(POLICIES, sig(**kw))
    assert (d.route, d.policy) == (route, policy)
    assert d.reason


@pytest.mark.parametrize(
    "text,kind",
    [
        ("mail me at jane.doe@example.com please", "email"),
        ("call +1 415-555-0132 tomorrow", "phone"),
        ("my card is 4111 1111 1111 1111", "card"),
        ("SSN 123-45-6789", "us_ssn"),
        ("IBAN DE89 3704 0044 0532 0130 00", "iban"),
    ],
)
def test_privacy_keeps_personal_data_local_even_when_cloud_is_forced(text: str, kind: str) -> None:
    d = route_request(POLICIES, sig(prompt_text=text, forced="cloud", prompt_tokens=5000))
    assert (d.route, d.policy, d.private) == ("local", "privacy", True)
    assert kind in d.reason


@pytest.mark.parametrize(
    "text",
    [
        "the year 2024 had 366 days",
        "order 1234 5678 9012 3456 shipped",
        "version 1.2.3",
        "pi is 3.14159",
    ],
)
def test_privacy_has_no_false_alarms_on_ordinary_numbers(text: str) -> None:
    assert PrivacyPolicy().matches(text) == []


def test_custom_privacy_patterns() -> None:
    p = PrivacyPolicy({"employee_id": r"\bEMP-\d{6}\b"})
    assert p.matches("ticket for EMP-004211") == ["employee_id"]
    assert p.matches("jane@example.com") == []
