"""Schema-constrained decoding in the cloud's batch (xgrammar bitmasks), over real gRPC on
127.0.0.1 with the real default model: constrained and free requests share a batch, and a
hand-off's prefix resumes the grammar where the device left it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud import Client
from edgecloud.cloud import CloudServer, TorchBackend
from edgecloud.common.aio import LoopThread
from edgecloud.config import CloudConfig, Settings
from edgecloud.errors import InvalidRequestError
from edgecloud.types import SamplingParams
from tests.fakes import handing_off_device
from tests.integration._cloudlocal import CONFIG, float32_backend, run
from tests.integration.test_cloud_verify import ask, cloud

pytestmark = [pytest.mark.model]

PROMPT = (
    "Orders for the warehouse robot, as JSON.\n"
    "Order: put the crate into bay 7.\n"
    'JSON: {"action": "place", "bay": 7}\n'
    "Order: take the box from bay 3.\n"
    "JSON:"
)
ACTION = {
    "type": "object",
    "properties": {"action": {"enum": ["pick", "place", "wait"]}, "bay": {"type": "integer"}},
    "required": ["action", "bay"],
}
CONSTRAINED = SamplingParams(max_tokens=24, json_schema=json.dumps(ACTION))
FREE = SamplingParams(max_tokens=12)


@pytest.fixture(scope="module")
def cloud_backend() -> Iterator[TorchBackend]:
    yield from float32_backend()


def test_constrained_and_free_requests_share_a_batch(cloud_backend: TorchBackend) -> None:
    async def main() -> tuple[str, str, str]:
        async with cloud(cloud_backend) as c:
            alone = (await ask(c, PROMPT, params=FREE)).tokens
            before = cloud_backend._scheduler.steps
            constrained, free = await asyncio.gather(
                ask(c, PROMPT, params=CONSTRAINED), ask(c, PROMPT, params=FREE)
            )
            assert cloud_backend._scheduler.steps - before < 24 + 12  # they shared steps
            assert free.tokens == alone  # the mask touched only the constrained row
            return constrained.text, free.text, constrained.finish.reason

    text, free_text, reason = run(main)
    assert reason == "stop"
    value = json.loads(text)
    assert value["action"] in {"pick", "place", "wait"} and isinstance(value["bay"], int)
    assert not free_text.lstrip().startswith("{") or free_text != text


@pytest.mark.parametrize("verify", [False, True])
def test_a_hand_off_prefix_resumes_the_grammar(cloud_backend: TorchBackend, verify: bool) -> None:
    prefix = '{"action": "pick", "bay'

    async def main() -> str:
        async with cloud(cloud_backend) as c:
            answer = await ask(c, PROMPT, params=CONSTRAINED, assistant_prefix=prefix,
                               verify_prefix=verify)  # fmt: skip
            assert answer.finish.reason == "stop"
            return answer.after(prefix)

    value = json.loads(run(main))
    assert set(value) == {"action", "bay"} and isinstance(value["bay"], int)


def test_schemas_and_prefixes_the_cloud_cannot_follow_are_refused(
    cloud_backend: TorchBackend,
) -> None:
    async def main() -> None:
        async with cloud(cloud_backend) as c:
            bad = SamplingParams(max_tokens=8, json_schema='{"type": "strange"}')
            with pytest.raises(InvalidRequestError, match="grammar compiler"):
                await ask(c, PROMPT, params=bad)
            with pytest.raises(InvalidRequestError, match="prefix does not follow"):
                await ask(c, PROMPT, params=CONSTRAINED, assistant_prefix=' {"verb"')

    run(main)


@pytest.fixture(scope="module")
def hybrid(
    cloud_backend: TorchBackend, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Client]:
    """A device client whose every answer is handed off after 3 tokens, to an in-process
    cloud on the real model."""
    runner = LoopThread("test-cloud")
    server = runner.run(CloudServer.start(cloud_backend, CloudConfig.model_validate(CONFIG)))
    log_dir = str(tmp_path_factory.mktemp("device"))
    device = handing_off_device(server.port, log_dir, first_token_timeout_s=60)
    try:
        with Client.local(settings=Settings.load(cache_dir=model_cache, device=device)) as client:
            yield client
    finally:
        runner.run(server.stop(0))
        runner.close()


def valid_action(text: str) -> dict[str, object]:
    value = json.loads(text)
    assert value["action"] in {"pick", "place", "wait"} and isinstance(value["bay"], int)
    return value  # type: ignore[no-any-return]


def test_a_device_that_hands_off_mid_answer_gets_valid_json_from_the_cloud(
    hybrid: Client,
) -> None:
    with hybrid.stream(PROMPT, schema=ACTION, max_tokens=24) as stream:
        chunks = list(stream)
    result = stream.result
    assert result.route is not None and result.route.policy == "confidence-window"
    assert result.route.local_tokens_before_handoff + result.route.rejected_local_tokens == 3
    assert [c.source for c in chunks[:3]] == ["local"] * 3
    assert {c.source for c in chunks if c.token_id >= 0} >= {"cloud"}
    assert result.finish_reason == "stop"
    assert result.parsed == valid_action(result.text)


@pytest.mark.parametrize("speculative", [0, 4])
def test_a_cloud_answer_follows_the_schema_speculative_or_not(
    hybrid: Client, speculative: int
) -> None:
    result = hybrid.generate(
        PROMPT, schema=ACTION, max_tokens=24, route="cloud", speculative=speculative
    )
    assert result.source == "cloud" and result.parsed == valid_action(result.text)
    if speculative:
        assert result.route is not None and result.route.draft_tokens > 0
