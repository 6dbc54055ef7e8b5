"""Ranking of discovered services, and the settings that steer discovery."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from edgecloud.config import Settings
from edgecloud.discovery import default_name, plan, rank, score


@dataclass
class Svc:
    name: str
    rtt_s: float | None
    load: float | None = None
    healthy: bool | None = True


def test_the_fastest_healthy_service_ranks_first() -> None:
    items = [Svc("slow", 0.030), Svc("fast", 0.002), Svc("mid", 0.010)]
    assert [s.name for s in rank(items, load_weight_ms=100)] == ["fast", "mid", "slow"]


def test_advertised_load_costs_round_trip_time() -> None:
    busy, idle = Svc("busy", 0.002, load=1.0), Svc("idle", 0.030, load=0.0)
    assert score(busy, load_weight_ms=100) == pytest.approx(102.0)
    assert [s.name for s in rank([busy, idle], load_weight_ms=100)] == ["idle", "busy"]
    # with the load weighed at nothing, the round trip alone decides
    assert [s.name for s in rank([busy, idle], load_weight_ms=0)] == ["busy", "idle"]


def test_failed_services_rank_last_and_unprobed_ones_between() -> None:
    items = [
        Svc("down", 0.001, healthy=False),
        Svc("new", None, healthy=None),
        Svc("up", 0.050),
        Svc("unmeasured", None),
    ]
    assert [s.name for s in rank(items, load_weight_ms=100)] == [
        "up", "unmeasured", "new", "down",
    ]  # fmt: skip


def test_equal_scores_keep_a_stable_order_by_name() -> None:
    items = [Svc("b", 0.01), Svc("a", 0.01)]
    assert [s.name for s in rank(items, load_weight_ms=100)] == ["a", "b"]


def test_discovery_settings_validate_what_they_are_given() -> None:
    s = Settings.load(device={"discovery": {"enabled": True, "interfaces": ["127.0.0.1"],
                                            "pinned_fingerprints": ["AB:" * 31 + "AB"]}})  # fmt: skip
    assert s.device.discovery.pinned_fingerprints == ["ab" * 32]
    assert s.cloud.discovery.advertise is None and s.device.discovery.interfaces == ["127.0.0.1"]
    from edgecloud.errors import ConfigError

    for bad in ({"interfaces": ["eth0"]}, {"pinned_fingerprints": ["abc"]},
                {"service_type": "edgecloud.local"}, {"interfaces": []}):  # fmt: skip
        with pytest.raises((ConfigError, ValidationError)):
            Settings.load(device={"discovery": bad})


def test_a_service_is_announced_where_it_listens() -> None:
    assert plan("127.0.0.1", None) == (["127.0.0.1"], ["127.0.0.1"])
    assert plan("10.1.2.3", ["10.1.2.3"]) == (["10.1.2.3"], ["10.1.2.3"])
    assert plan("0.0.0.0", ["192.168.1.5"]) == (["192.168.1.5"], ["192.168.1.5"])
    where, addresses = plan("0.0.0.0", None)
    assert where == "all" and "127.0.0.1" not in addresses
    name = default_name("edgecloud", 50051)
    assert name.startswith("edgecloud-") and name.endswith("-50051") and len(name) <= 63
    assert "." not in name
