"""The fsspec registry: publish, versions, files, rollout state, fleet reports."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud.adapters._registry import AdapterRegistry, in_audience
from edgecloud.adapters._signing import load_public_keys, public_key_b64, verify
from edgecloud.errors import (
    AdapterError,
    AdapterFormatError,
    InvalidRequestError,
    UnknownAdapterError,
)
from tests.fakes_adapters import publish_fake


@pytest.fixture(params=["local", "memory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AdapterRegistry:
    if request.param == "local":
        return AdapterRegistry(tmp_path / "registry")
    return AdapterRegistry(f"memory://reg-{uuid.uuid4().hex}")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_publish_assigns_versions_and_signs(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    assert registry.versions("default") == []
    m1 = publish_fake(registry, key, tmp_path / "src", answer="one")
    m2 = publish_fake(registry, key, tmp_path / "src", answer="two two")
    assert (m1.version, m2.version) == (1, 2)
    assert registry.versions("default") == [1, 2]
    assert registry.adapters() == ["default"]
    signed = registry.manifest("default", 2)
    trusted = load_public_keys([public_key_b64(key.public_key())])
    assert verify(signed, trusted) == m2
    entry = m2.files["adapter.gguf"]
    with registry.open_file("default", 2, "adapter.gguf", 3) as f:
        rest = f.read()
    assert len(rest) == entry.size - 3
    with registry.open_file("default", 2, "adapter.gguf") as f:
        import hashlib

        assert hashlib.sha256(f.read()).hexdigest() == entry.sha256


def test_bad_requests(registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    publish_fake(registry, key, tmp_path / "src")
    with pytest.raises(UnknownAdapterError):
        registry.manifest("default", 9)
    with pytest.raises(UnknownAdapterError):
        registry.manifest("default", 0)
    with pytest.raises(UnknownAdapterError):
        registry.open_file("default", 1, "nope.bin")
    with pytest.raises(AdapterFormatError):
        registry.open_file("default", 1, "../1/manifest.json")
    with pytest.raises(AdapterFormatError):
        registry.manifest("../etc", 1)
    with pytest.raises(InvalidRequestError):
        registry.open_file("default", 1, "adapter.gguf", -1)
    with pytest.raises(InvalidRequestError):
        registry.open_file("default", 1, "adapter.gguf", 10**9)
    with pytest.raises(AdapterFormatError):
        publish_fake(registry, key, tmp_path / "src", extra={"../evil": b"x"})
    with pytest.raises(AdapterFormatError):
        publish_fake(registry, key, tmp_path / "src", adapter_id="../x")


def test_version_without_manifest_is_invisible_and_not_reused(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    publish_fake(registry, key, tmp_path / "src")
    assert registry._claim("default") == 2  # a publisher that died before its manifest
    assert registry.versions("default") == [1]
    assert publish_fake(registry, key, tmp_path / "src").version == 3


def test_concurrent_publishers_get_distinct_versions(
    key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    registry = AdapterRegistry(tmp_path / "registry")
    got: list[int] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            own = AdapterRegistry(tmp_path / "registry")  # as another process would
            got.append(publish_fake(own, key, tmp_path / f"src{i}").version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert registry.versions("default") == [1, 2, 3, 4, 5, 6]


def test_staged_rollout_percent_cohort_promote_rollback(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    for _ in range(3):
        publish_fake(registry, key, tmp_path / "src")
    devices = [f"dev-{i}" for i in range(400)]
    assert registry.assigned("default", "dev-1") is None  # nothing rolled out yet
    registry.rollout("default", 1, 100)
    assert {registry.assigned("default", d) for d in devices} == {1}

    registry.rollout("default", 2, 25)
    state = registry.rollout_state("default")
    on_two = {d for d in devices if registry.assigned_in(state, "default", d) == 2}
    assert 60 < len(on_two) < 140  # about a quarter
    assert all(registry.assigned_in(state, "default", d) == 1 for d in set(devices) - on_two)
    # raising the percent only adds devices
    registry.rollout("default", 2, 50)
    state = registry.rollout_state("default")
    on_two_50 = {d for d in devices if registry.assigned_in(state, "default", d) == 2}
    assert on_two < on_two_50
    # a cohort gets the candidate whatever its hash
    registry.rollout("default", 2, 0, cohort="lab")
    outside = next(d for d in devices if not in_audience("default", d, 50))
    assert registry.assigned("default", outside, "lab") == 2
    assert registry.assigned("default", outside, "field") == 1
    assert registry.assigned("default", outside) == 1

    # rollback withdraws the candidate
    registry.rollback("default")
    assert registry.assigned("default", outside, "lab") == 1
    assert 2 in registry.rollout_state("default").withdrawn

    registry.rollout("default", 3, 100)
    assert registry.assigned("default", "x") == 3
    registry.rollback("default")  # no candidate: back to the previous stable
    assert registry.assigned("default", "x") == 1
    registry.rollback("default", to=3)
    assert registry.assigned("default", "x") == 3
    registry.rollback("default")
    registry.rollback("default")
    assert registry.rollout_state("default").stable is None  # back to the base model
    with pytest.raises(AdapterError):
        registry.rollback("default")
    with pytest.raises(UnknownAdapterError):
        registry.rollout("default", 7, 10)
    with pytest.raises(UnknownAdapterError):
        registry.rollback("default", to=7)
    with pytest.raises(InvalidRequestError):
        registry.rollout("default", 1, 101)


def test_promote(registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    publish_fake(registry, key, tmp_path / "src")
    with pytest.raises(AdapterError):
        registry.promote("default")
    registry.rollout("default", 1, 10)
    state = registry.promote("default")
    assert (state.stable, state.candidate) == (1, None)


def test_fleet_reports(registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    publish_fake(registry, key, tmp_path / "src")
    registry.report("robot-1", "default", 1, "running")
    registry.report("robot-2", "default", 1, "canary_failed", "1/3 passed")
    registry.report("robot-1", "default", 0, "running")  # later report replaces the earlier
    fleet = registry.fleet("default")
    assert [(r.device_id, r.version, r.status) for r in fleet] == [
        ("robot-1", 0, "running"),
        ("robot-2", 1, "canary_failed"),
    ]
    with pytest.raises(InvalidRequestError):
        registry.report("", "default", 1, "running")
    with pytest.raises(AdapterFormatError):
        registry.report("r", "../x", 1, "running")


def test_the_cloud_materializes_the_stable_peft_files_verified(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    from edgecloud.cloud._server import stable_peft_adapters
    from edgecloud.errors import AdapterIntegrityError

    cache = tmp_path / "cache"
    publish_fake(registry, key, tmp_path / "src", extra={"peft/adapter_model.safetensors": b"w1"})
    publish_fake(registry, key, tmp_path / "src", extra={"peft/adapter_model.safetensors": b"w2"})
    assert stable_peft_adapters(registry, cache) == {}  # published, not rolled out
    registry.rollout("default", 2, 100)
    [(aid, path)] = stable_peft_adapters(registry, cache).items()
    assert aid == "default" and path == cache / "cloud" / "adapters" / "default" / "2"
    assert (path / "adapter_model.safetensors").read_bytes() == b"w2"
    assert (path / "adapter_config.json").read_text() == '{"r": 8}'
    assert stable_peft_adapters(registry, cache)["default"] == path  # reused
    # bytes changed at rest in the registry: refused, nothing half-written left behind
    registry.rollout("default", 1, 100)
    stored = f"{registry._adapter('default')}/1/files/peft/adapter_model.safetensors"
    with registry._fs.open(stored, "wb") as f:
        f.write(b"evil")
    with pytest.raises(AdapterIntegrityError):
        stable_peft_adapters(registry, cache)
    assert not (cache / "cloud" / "adapters" / "default" / "1").exists()
    assert [p.name for p in (cache / "cloud" / "adapters" / "default").iterdir()] == ["2"]
