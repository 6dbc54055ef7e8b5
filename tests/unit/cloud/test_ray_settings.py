"""The Ray engine's pure parts: its settings and the multiplexed model ids (no Ray)."""

from __future__ import annotations

from pathlib import Path

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


def test_build_app_reads_the_cloud_table_of_the_toml(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from ray.serve import Application

    from edgecloud.cloud._ray import build_app

    toml = tmp_path / "cloud.toml"
    toml.write_text('[cloud]\nbackend = "ray"\n[cloud.ray]\nreplicas = 2\nmax_replicas = 6\n')
    app = build_app({"config": str(toml), "cache_dir": str(tmp_path)})
    assert isinstance(app, Application)
    # The deployment carries cloud.ray's autoscaling; its constructor the settings.
    deployment = app._bound_deployment
    auto = deployment._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas) == (2, 6)
    config_json, cache_dir, registry = deployment.init_args
    assert CloudConfig.model_validate_json(config_json).ray.max_replicas == 6
    assert (cache_dir, registry) == (str(tmp_path), str(tmp_path / "registry"))
