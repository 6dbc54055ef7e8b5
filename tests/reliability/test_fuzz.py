"""Fuzzing with hypothesis: serde (proto messages <-> plain types), raw bytes sent to every
gRPC method of the cloud service, HTTP bodies sent to the OpenAI endpoint, and mutated GGUF
adapters, ONNX graphs, adapter manifests and TOML config files.

Nothing may crash, and every failure must be a clear one: the project's error types, a gRPC
status other than UNKNOWN/INTERNAL/UNAVAILABLE, an HTTP 4xx with an OpenAI error body.
A few hundred cases by default; ``--soak`` runs over 10,000 (the count is printed).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud._client import AsyncClient
from edgecloud._proto.v1 import adapters_pb2 as apb
from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud.adapters._gguf import read_lora_gguf
from edgecloud.adapters._manifest import Manifest
from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cloud import CloudServer
from edgecloud.cloud._records import RecordStore
from edgecloud.common.aio import LoopThread
from edgecloud.common.onnx import OnnxRunner
from edgecloud.config import CloudConfig, Settings
from edgecloud.errors import (
    AdapterFormatError,
    ConfigError,
    InvalidRequestError,
    ModelIntegrityError,
)
from edgecloud.http import Server
from edgecloud.transport._serde import (
    event_from_proto,
    params_from_proto,
    prompt_from_proto,
    record_from_proto,
    verification_from_proto,
)
from tests.fakes import ScriptedBackend
from tests.fakes_cloud import ScriptedEngine
from tests.unit.adapters.test_manifest import _fields as manifest_fields
from tests.unit.split import graphs

CASES: Counter[str] = Counter()
# default budget per test, and with --soak (the whole file: ~600 and ~10,800)
BUDGET = {"serde": (100, 1500), "grpc": (200, 3000), "http": (100, 1500), "file": (50, 1200)}
BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}


def budget(request: pytest.FixtureRequest, kind: str) -> Callable[[Any], Any]:
    soak = bool(request.config.getoption("--soak"))
    # the default run is the same every time (CI must not flake); --soak explores anew
    return settings(max_examples=BUDGET[kind][soak], deadline=None, database=None,
                    derandomize=not soak, suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def count(figures: dict[str, Any]) -> Iterator[None]:
    yield
    figures["fuzz_cases"] = {**figures.get("fuzz_cases", {}), **CASES}
    print(f"\nfuzz cases run: {dict(CASES)}, total {sum(CASES.values())}")


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes flipped, inserted or deleted, or cut short."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def fuzzed(*seeds: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), *(mutated(s) for s in seeds))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip

# nested brackets past Python's recursion limit (json.loads raises RecursionError)
BOMB = st.integers(500, 30_000).map(lambda n: "[" * n + "]" * n)


# -- serde ----------------------------------------------------------------------------------

REQUEST = pb.GenerateRequest(
    chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")]),
    sampling=pb.SamplingParams(max_tokens=8, temperature=0.5, top_p=0.9, stop=["\n"], json_schema='{"type": "object"}'),
    adapter_id="default", assistant_prefix="the", verify_prefix=True, prefix_logprobs=[-0.5],
).SerializeToString()  # fmt: skip
RESPONSES = [pb.GenerateResponse(token=pb.Token(text="a", token_id=3, logprob=-0.1, index=0)),
             pb.GenerateResponse(finish=pb.Finish(reason=1, passages=[pb.Passage(text="p")])),
             pb.GenerateResponse(retract=pb.Retract(kept_chars=1, rejected="x"))]  # fmt: skip
RECORD = pb.EscalationRecord(
    id="rec-1", created_at_unix_ms=1, prompt="p", cloud_answer="a", signals_json='{"a": 1}',
    extra_json='{"b": [1]}', latency_ms=2.5,
).SerializeToString()  # fmt: skip


def test_serde_turns_any_message_into_plain_types_or_a_clear_error(
    request: pytest.FixtureRequest,
) -> None:
    @budget(request, "serde")
    @given(fuzzed(REQUEST), fuzzed(*(r.SerializeToString() for r in RESPONSES)), fuzzed(RECORD),
           st.one_of(st.text(), BOMB), st.floats(), st.integers(-(2**31), 2**31 - 1))  # fmt: skip
    def case(req: bytes, resp: bytes, rec: bytes, text: str, x: float, n: int) -> None:
        CASES["serde"] += 1
        for raw, parse in ((req, _request), (resp, _response), (rec, _record)):
            try:
                parse(raw, text, x, n)
            except InvalidRequestError as exc:
                assert str(exc)

    case()


def _decode(cls: Any, raw: bytes) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except Exception:  # the protobuf DecodeError: the servers' DecodeGuard answers it
        return None
    return msg


def _request(raw: bytes, text: str, x: float, n: int) -> None:
    msg = _decode(pb.GenerateRequest, raw) or pb.GenerateRequest(prompt=text)
    if n % 3 == 0:  # and typed values no encoder would produce
        msg.sampling.temperature, msg.sampling.top_p = x, -x
        msg.sampling.max_tokens = abs(n)
        msg.sampling.json_schema = text
    prompt_from_proto(msg)
    params = params_from_proto(msg.sampling, default_max_tokens=16)
    assert params.max_tokens >= 1 and math.isfinite(params.temperature)
    verification_from_proto(msg)


def _response(raw: bytes, text: str, x: float, n: int) -> None:
    msg = _decode(pb.GenerateResponse, raw)
    if msg is not None:
        event_from_proto(msg)


def _record(raw: bytes, text: str, x: float, n: int) -> None:
    msg = _decode(pb.EscalationRecord, raw) or pb.EscalationRecord(id=text[:64], signals_json=text)
    record = record_from_proto(msg)
    assert record.id and isinstance(record.signals, dict) and isinstance(record.extra, dict)


# -- raw bytes to every gRPC method of the cloud service -----------------------------------


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.fakes_adapters import publish_fake

    where = tmp_path_factory.mktemp("fuzz-cloud")
    registry = AdapterRegistry(where / "registry")
    publish_fake(registry, Ed25519PrivateKey.generate(), where / "src")
    registry.rollout("default", 1, 100)
    runner = LoopThread("fuzz-cloud")
    config = CloudConfig.model_validate({"insecure": True, "port": 0, "max_new_tokens": 16,
                                         "default_max_tokens": 8, "max_message_bytes": 65536})  # fmt: skip
    server = runner.run(CloudServer.start(ScriptedEngine("a b c", adapters=["default"]), config,
                                          records=RecordStore(where / "r.db"), registry=registry))  # fmt: skip
    try:
        yield server.port
    finally:
        runner.run(server.stop(0))
        runner.close()


METHODS: dict[str, tuple[str, list[bytes]]] = {
    "/edgecloud.v1.InferenceService/Generate": ("unary_stream", [REQUEST, pb.GenerateRequest(prompt="hi").SerializeToString()]),
    "/edgecloud.v1.InferenceService/GetServiceInfo": ("unary_unary", [b""]),
    "/edgecloud.v1.InferenceService/UploadEscalations": ("stream_unary", [RECORD]),
    "/edgecloud.v1.AdapterSync/WatchAdapters": ("unary_stream", [apb.WatchRequest(adapter_id="default", device_id="d").SerializeToString()]),
    "/edgecloud.v1.AdapterSync/FetchAdapter": ("unary_stream", [apb.FetchRequest(adapter_id="default", version=1, name="adapter.gguf", offset=3).SerializeToString()]),
    "/edgecloud.v1.AdapterSync/ReportAdapter": ("unary_unary", [apb.AdapterReport(device_id="d", adapter_id="default", version=1, status="running").SerializeToString()]),
}  # fmt: skip


def _call(channel: grpc.Channel, method: str, kind: str, raws: list[bytes]) -> grpc.StatusCode:
    """One call with raw request bytes; its status (OK when it answered)."""
    ident = {"request_serializer": None, "response_deserializer": None}
    try:
        if kind == "unary_unary":
            channel.unary_unary(method, **ident)(raws[0], timeout=10)
        elif kind == "stream_unary":
            channel.stream_unary(method, **ident)(iter(raws), timeout=10)
        else:
            call = channel.unary_stream(method, **ident)(raws[0], timeout=10)
            for i, _ in enumerate(call):
                if i >= 3:  # enough: a watch stream stays open
                    call.cancel()
                    break
    except grpc.RpcError as exc:
        code = exc.code()
        details = exc.details() or ""
        assert code not in BAD_CODES, (method, code, details)
        assert "Traceback" not in details and 'File "' not in details
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_raw_bytes_to_every_grpc_method_get_a_clean_status(
    cloud: int, request: pytest.FixtureRequest
) -> None:
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(f"127.0.0.1:{cloud}") as channel:

        @budget(request, "grpc")
        @given(st.sampled_from(sorted(METHODS)), st.data())
        def case(method: str, data: st.DataObject) -> None:
            kind, seeds = METHODS[method]
            many = st.lists(fuzzed(*seeds), min_size=0 if kind == "stream_unary" else 1,
                            max_size=3 if kind == "stream_unary" else 1)  # fmt: skip
            CASES["grpc"] += 1
            code = _call(channel, method, kind, data.draw(many))
            seen[f"{method.rsplit('/', 1)[1]} {code.name}"] += 1

        case()
        # the service still answers properly after all that
        assert _call(channel, *_generate()) == grpc.StatusCode.OK
    print(f"\ngrpc statuses: {dict(seen)}")


def _generate() -> tuple[str, str, list[bytes]]:
    name = "/edgecloud.v1.InferenceService/Generate"
    return name, METHODS[name][0], [METHODS[name][1][1]]


# -- HTTP bodies to the OpenAI endpoint ----------------------------------------------------


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    settings_ = Settings.load(device={"http": {"port": 0}})
    with Server(settings_, client=AsyncClient(ScriptedBackend())) as s:
        yield f"http://127.0.0.1:{s.port}"


MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot", ""]),
     "content": st.one_of(st.text(max_size=40), JSON)},
)  # fmt: skip
NUMBER = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=4), st.none()
)
CHAT = st.fixed_dictionaries(
    {"model": st.text(max_size=10), "messages": st.lists(MESSAGE, max_size=3)},
    optional={"max_tokens": NUMBER, "temperature": NUMBER, "top_p": NUMBER, "n": NUMBER,
              "stream": st.one_of(st.booleans(), JSON), "stop": st.one_of(st.text(max_size=5), JSON),
              "response_format": JSON, "tools": JSON, "seed": NUMBER, "logprobs": JSON,
              "top_logprobs": NUMBER, "prompt": JSON},
)  # fmt: skip

NEAR_VALID = st.fixed_dictionaries(
    {"model": st.just("scripted"),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                 "content": st.text(max_size=30)}), min_size=1, max_size=2)},
    optional={"max_tokens": st.integers(-5, 5000), "temperature": st.floats(-1, 3),
              "top_p": st.floats(-0.5, 1.5), "stream": st.booleans(), "seed": st.integers(-1, 2**64),
              "stop": st.lists(st.text(max_size=3), max_size=5)},
)  # fmt: skip


def test_any_http_body_gets_an_answer_or_a_4xx(
    http_url: str, request: pytest.FixtureRequest
) -> None:
    seen: Counter[int] = Counter()
    with httpx.Client(timeout=30) as client:

        @budget(request, "http")
        @given(st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
               st.one_of(CHAT.map(lambda b: json.dumps(b).encode()),
                         NEAR_VALID.map(lambda b: json.dumps(b).encode()),
                         JSON.map(lambda b: json.dumps(b).encode()),
                         BOMB.map(lambda b: f'{{"model": "scripted", "messages": {b}}}'.encode()),
                         fuzzed(json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2}).encode())))  # fmt: skip
        def case(path: str, body: bytes) -> None:
            CASES["http"] += 1
            r = client.post(http_url + path, content=body,
                            headers={"content-type": "application/json"})  # fmt: skip
            seen[r.status_code] += 1
            assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
            if r.status_code != 200:
                assert r.json()["error"]["message"]

        case()
    print(f"\nhttp statuses: {dict(seen)}")


# -- mutated files --------------------------------------------------------------------------


def _lora_gguf(path: Path) -> bytes:
    import gguf

    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 16.0)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((4, 8), np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.ones((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _toml() -> bytes:
    return (b'cache_dir = "/tmp/x"\n[device.router]\nwindow = 4\nmin_mean_logprob = -2.5\n'
            b'[device.cloud]\ntimeout_s = 10\n[[device.cloud.endpoints]]\ntarget = "127.0.0.1:1"\n'
            b'tls = false\n[cloud]\nmax_new_tokens = 512\n[cloud.auth.tokens]\nrobot = "' + b"a" * 64 + b'"\n')  # fmt: skip


@pytest.mark.parametrize("kind", ["gguf", "onnx", "manifest", "toml"])
def test_a_mutated_file_loads_or_fails_with_the_project_error(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / f"file.{kind}"
    seed = {
        "gguf": lambda: _lora_gguf(tmp_path / "seed.gguf"),
        "onnx": lambda: graphs.chain(tmp_path / "seed.onnx").read_bytes(),
        "manifest": lambda: Manifest.model_validate(manifest_fields()).to_json(),
        "toml": _toml,
    }[kind]()
    load, error = {
        "gguf": (read_lora_gguf, AdapterFormatError),
        "onnx": (OnnxRunner, ModelIntegrityError),
        "manifest": (lambda p: Manifest.from_json(p.read_bytes()), AdapterFormatError),
        "toml": (Settings.load, ConfigError),
    }[kind]
    load(_write(path, seed))  # the seed itself loads
    outcomes: Counter[str] = Counter()
    bombs = {
        "toml": BOMB.map(lambda b: f"cache_dir = {b.replace('][', '],[')}\n".encode()),
        "manifest": BOMB.map(lambda b: f'{{"adapter_id": {b}}}'.encode()),
    }

    @budget(request, "file")
    @given(st.one_of(mutated(seed), bombs.get(kind, st.nothing())))
    def case(data: bytes) -> None:
        CASES[kind] += 1
        try:
            load(_write(path, data))
            outcomes["loaded"] += 1
        except error as exc:
            assert str(exc)
            outcomes["refused"] += 1

    case()
    print(f"\n{kind}: {dict(outcomes)}")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
