"""Runtime LoRA loading of the ``openai`` backend (``cloud.upstream.load_adapters``).

The upstream is :mod:`tests.vllm_standin`, a real HTTP server on a loopback port that
implements vLLM's documented ``load_lora_adapter`` / ``unload_lora_adapter`` endpoints
and a streaming ``/v1/completions`` whose answer names the model that served it (vLLM
itself cannot run here). A real CloudServer with a real adapter registry forwards to
it, and a device-side CloudClient streams over gRPC.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cloud._upstream import UpstreamBackend
from edgecloud.config import CloudConfig
from edgecloud.errors import TransportError, UnknownAdapterError
from edgecloud.transport import CloudClient
from tests.fakes_adapters import publish_fake
from tests.integration._cloudproc import collect
from tests.integration._upstreamserve import client_of, serving
from tests.vllm_standin import VllmStandIn, vllm_standin

PROMPT = "Q: Who serves this?\nA:"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(str(tmp_path / "registry"))


def promote(registry: AdapterRegistry, key: Ed25519PrivateKey, tmp: Path, adapter_id: str,
            **kwargs: Any) -> int:  # fmt: skip
    """Publish a new version of ``adapter_id`` and make it the stable one."""
    version = publish_fake(registry, key, tmp / "src", adapter_id=adapter_id, **kwargs).version
    registry.rollout(adapter_id, version, 100.0)
    return version


async def answer(client: CloudClient, adapter_id: str | None) -> str:
    chunks, _ = await collect(client, PROMPT, max_tokens=8, adapter_id=adapter_id)
    return "".join(ch.text for ch in chunks)


def test_a_request_loads_the_stable_version_and_is_served_by_it(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    promote(registry, key, tmp_path, "A")

    async def scenario(up: VllmStandIn) -> list[str]:
        async with serving(up.url, tmp_path, load_adapters=True) as c:
            adapters = list((await c.info())["adapters"])
            return [await answer(c, "A"), await answer(c, "A"), await answer(c, None), *adapters]

    with vllm_standin() as up:
        texts = asyncio.run(scenario(up))
    assert texts[3:] == ["A"]  # GetServiceInfo lists the registry's adapters
    texts = texts[:3]
    assert texts == [" served by A@1", " served by A@1", " served by base-model"]
    assert up.calls == [("load", "A@1")]  # once, not per request
    path = Path(up.loras["A@1"])  # the registry's verified peft copy, in the cache
    assert path == tmp_path / "cache" / "cloud" / "adapters" / "A" / "1"
    assert (path / "adapter_config.json").read_text() == '{"r": 8}'


def test_a_new_stable_version_is_loaded_and_the_old_one_unloaded(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    promote(registry, key, tmp_path, "A")

    async def scenario(up: VllmStandIn) -> list[str]:
        async with serving(up.url, tmp_path, load_adapters=True) as c:
            first = await answer(c, "A")
            promote(registry, key, tmp_path, "A")
            return [first, await answer(c, "A"), await answer(c, "A")]

    with vllm_standin() as up:
        texts = asyncio.run(scenario(up))
    assert texts == [" served by A@1", " served by A@2", " served by A@2"]
    assert up.calls == [("load", "A@1"), ("load", "A@2"), ("unload", "A@1")]
    assert set(up.loras) == {"A@2"}


def test_the_old_version_is_unloaded_when_its_last_stream_ends(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    promote(registry, key, tmp_path, "A")

    async def scenario(up: VllmStandIn) -> tuple[str, str, list[tuple[str, str]]]:
        async with serving(up.url, tmp_path, load_adapters=True) as c:
            up.hold.add("A@1")
            first = asyncio.create_task(answer(c, "A"))
            while "A@1" not in up.served:
                await asyncio.sleep(0.01)
            promote(registry, key, tmp_path, "A")
            second = await answer(c, "A")  # A@2 loads while A@1 still streams
            meanwhile = list(up.calls)
            up.hold.clear()
            first_text = await first
            for _ in range(500):
                if ("unload", "A@1") in up.calls:
                    break
                await asyncio.sleep(0.01)
            return first_text, second, meanwhile

    with vllm_standin() as up:
        first, second, meanwhile = asyncio.run(scenario(up))
    assert (first, second) == (" served by A@1", " served by A@2")
    assert meanwhile == [("load", "A@1"), ("load", "A@2")]  # A@1 kept for its stream
    assert up.calls == [*meanwhile, ("unload", "A@1")] and set(up.loras) == {"A@2"}


def test_concurrent_requests_wait_for_one_load(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    promote(registry, key, tmp_path, "A")

    async def scenario(up: VllmStandIn) -> list[str]:
        async with serving(up.url, tmp_path, load_adapters=True) as c:
            return list(await asyncio.gather(*(answer(c, "A") for _ in range(8))))

    with vllm_standin(load_delay_s=0.5) as up:
        texts = asyncio.run(scenario(up))
    assert texts == [" served by A@1"] * 8
    assert up.calls == [("load", "A@1")] and up.max_parallel_loads == 1
    assert up.served == ["A@1"] * 8


def test_a_name_the_upstream_already_has_counts_as_loaded(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A restarted service finds its LoRA still loaded upstream (vLLM answers 400)."""
    promote(registry, key, tmp_path, "A")

    async def scenario(up: VllmStandIn) -> list[str]:
        texts = []
        for _ in range(2):  # two service lifetimes, one upstream
            async with serving(up.url, tmp_path, load_adapters=True) as c:
                texts.append(await answer(c, "A"))
        return texts

    with vllm_standin() as up:
        texts = asyncio.run(scenario(up))
    assert texts == [" served by A@1"] * 2
    assert up.calls == [("load", "A@1"), ("load", "A@1")]


def test_a_refused_load_fails_the_request_clearly(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    # rank 64 above the upstream's --max-lora-rank 16: vLLM refuses with 400
    promote(registry, key, tmp_path, "big", extra={"peft/adapter_config.json": b'{"r": 64}'})
    promote(registry, key, tmp_path, "ok")

    async def scenario(up: VllmStandIn) -> tuple[str, str]:
        async with serving(up.url, tmp_path, load_adapters=True) as c:
            with pytest.raises(UnknownAdapterError) as refused:
                await answer(c, "big")
            return str(refused.value), await answer(c, "ok")

    with vllm_standin(max_lora_rank=16) as up:
        message, ok = asyncio.run(scenario(up))
    assert "'big' version 1" in message and "refused to load it as 'big@1'" in message
    assert "LoRA rank 64 is greater than max_lora_rank 16" in message
    assert ok == " served by ok@1" and set(up.loras) == {"ok@1"}  # the service goes on


def test_an_upstream_failing_the_load_is_unavailable_then_recovers(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    promote(registry, key, tmp_path, "A")

    async def scenario(up: VllmStandIn) -> tuple[str, str]:
        async with serving(up.url, tmp_path, load_adapters=True) as c:
            up.fail_loads = 500
            with pytest.raises(TransportError) as failed:
                await answer(c, "A")
            up.fail_loads = 0  # a refused load is not remembered: the next one tries
            return str(failed.value), await answer(c, "A")

    with vllm_standin() as up:
        message, text = asyncio.run(scenario(up))
    assert message.startswith("UNAVAILABLE") and "HTTP 500: CUDA error: out of memory" in message
    assert text == " served by A@1" and up.calls == [("load", "A@1")] * 2


def test_a_path_the_upstream_cannot_read_is_reported(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    promote(registry, key, tmp_path, "A")
    shared = tmp_path / "shared"  # the only volume the upstream mounts

    async def scenario(up: VllmStandIn) -> tuple[str, str]:
        # The peft copy goes to the cache, which the upstream does not see.
        async with serving(up.url, tmp_path, load_adapters=True) as c:
            with pytest.raises(UnknownAdapterError) as unseen:
                await answer(c, "A")
        async with serving(up.url, tmp_path, load_adapters=True, lora_dir=str(shared)) as c:
            return str(unseen.value), await answer(c, "A")

    with vllm_standin(sees=shared) as up:
        message, text = asyncio.run(scenario(up))
    cached = tmp_path / "cache" / "cloud" / "adapters" / "A" / "1"
    assert f"cannot read its LoRA files at {cached}" in message
    assert "No adapter found" in message and "cloud.upstream.lora_dir" in message
    assert text == " served by A@1" and up.loras["A@1"] == str(shared / "A" / "1")


def test_disabled_by_default_the_static_mapping_stands(
    registry: AdapterRegistry, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    promote(registry, key, tmp_path, "A")
    assert CloudConfig().upstream.load_adapters is False

    async def scenario(up: VllmStandIn) -> tuple[str, str]:
        async with serving(up.url, tmp_path, adapters={"support": "base-model"}) as c:
            with pytest.raises(UnknownAdapterError) as unknown:
                await answer(c, "A")
            return await answer(c, "support"), str(unknown.value)

    with vllm_standin() as up:
        text, message = asyncio.run(scenario(up))
    assert text == " served by base-model" and "'A' is not served" in message
    assert up.calls == []


def test_the_service_built_from_settings_loads_into_the_cache(
    key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """``edgecloud cloud serve``'s path: build_service hands the backend its registry."""
    from edgecloud.cloud._server import build_service
    from edgecloud.config import Settings

    promote(AdapterRegistry(str(tmp_path / "registry")), key, tmp_path, "A")

    async def scenario(up: VllmStandIn) -> str:
        parts = build_service(Settings.model_validate({"cache_dir": str(tmp_path / "cache"), "cloud": {
            "insecure": True, "backend": "openai", "records": {"path": str(tmp_path / "r.db")},
            "registry": {"url": str(tmp_path / "registry")},
            "upstream": {"url": up.url, "load_adapters": True}}}))  # fmt: skip
        assert isinstance(parts.backend, UpstreamBackend)
        async with client_of(parts.backend, parts.config, parts.records, parts.registry) as c:
            return await answer(c, "A")

    with vllm_standin() as up:
        text = asyncio.run(scenario(up))
    assert text == " served by A@1"
    assert up.loras["A@1"] == str(tmp_path / "cache" / "cloud" / "adapters" / "A" / "1")
