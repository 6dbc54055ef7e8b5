"""The Ray engine's pure parts: its settings and the multiplexed model ids (no Ray)."""

from __future__ import annotations

import pytest

from edgecloud.cloud._ray import adapter_model_id, parse_model_id
from edgecloud.config import CloudConfig
from edgecloud.errors import UnknownAdapterError


def test_model_ids_name_one_adapter_version() -> None:
    assert adapter_model_id("fleet", 3) == "fleet@3"
    assert parse_model_id("fleet@3") == ("fleet", 3)
    assert parse_model_id("a@b@12") == ("a@b", 12)
    for bad in ("fleet", "fleet@", "@3", "fleet@v3"):
        with pytest.raises(UnknownAdapterError):
            parse_model_id(bad)


def test_max_replicas_may_not_be_below_replicas() -> None:
    cfg = CloudConfig.model_validate({"backend": "ray", "ray": {"replicas": 2, "max_replicas": 8}})
    assert (cfg.ray.replicas, cfg.ray.max_replicas, cfg.ray.address) == (2, 8, None)
    with pytest.raises(ValueError, match="max_replicas"):
        CloudConfig.model_validate({"ray": {"replicas": 3, "max_replicas": 2}})
