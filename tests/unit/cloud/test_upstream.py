"""The openai backend without a model: the entropy estimate, token pieces, error mapping, and
scripted upstreams on loopback for the answers llama_cpp.server never gives (a 400, a broken
or failed event)."""

from __future__ import annotations

import asyncio
import http.server
import math
import threading

import pytest

from edgecloud.cloud._backend import CloudRequest
from edgecloud.cloud._upstream import UpstreamBackend, _pieces, _status_error, entropy_lower_bound
from edgecloud.config import CloudConfig
from edgecloud.errors import (
    CloudError,
    CloudModelLoadError,
    InvalidRequestError,
    OverloadedError,
    UnknownAdapterError,
)
from edgecloud.types import SamplingParams


def test_connect_fails_clearly_without_an_upstream() -> None:
    config = CloudConfig.model_validate(
        {"backend": "openai", "upstream": {"url": "http://127.0.0.1:9/v1", "timeout_s": 2}}
    )
    with pytest.raises(CloudModelLoadError, match="cannot list models"):
        UpstreamBackend.connect(config)


def test_entropy_estimate_is_a_lower_bound() -> None:
    probs = [0.5, 0.2, 0.1, 0.1, 0.05, 0.05]
    exact = -sum(p * math.log(p) for p in probs)
    top3 = {str(i): math.log(p) for i, p in enumerate(probs[:3])}
    estimate = entropy_lower_bound(top3)
    assert 0 < estimate <= exact and estimate > 0.8 * exact
    full = {str(i): math.log(p) for i, p in enumerate(probs)}
    assert entropy_lower_bound(full) == pytest.approx(exact)
    assert entropy_lower_bound(None) == 0.0 and entropy_lower_bound({}) == 0.0


def test_a_multi_token_event_becomes_one_chunk_per_token() -> None:
    lp = {"tokens": [" Par", "is"], "token_logprobs": [-0.5, -0.1],
          "top_logprobs": [{" Par": -0.5}, {"is": -0.1}]}  # fmt: skip
    pieces = _pieces({"text": " Paris", "logprobs": lp})
    assert [(p.text, p.logprob) for p in pieces] == [(" Par", -0.5), ("is", -0.1)]
    # Token strings that do not spell the text (a stop sequence cut it): text on the last.
    odd = _pieces({"text": " Pa", "logprobs": lp})
    assert [p.text for p in odd] == ["", " Pa"]
    assert [p.text for p in _pieces({"text": "x", "logprobs": None})] == ["x"]
    assert _pieces({"text": "", "logprobs": None}) == []


def test_upstream_http_errors_map_to_what_the_device_can_act_on() -> None:
    vllm_400 = (
        '{"object": "error", "message": "This model\'s maximum context length is 2048 tokens",'
        ' "type": "BadRequestError", "code": 400}'
    )
    error = _status_error(400, vllm_400, "m")
    assert isinstance(error, InvalidRequestError) and "maximum context length" in str(error)
    assert isinstance(_status_error(404, '{"detail": "no model"}', "lora-x"), UnknownAdapterError)
    assert isinstance(_status_error(429, "", "m"), OverloadedError)
    assert isinstance(_status_error(503, "busy", "m"), OverloadedError)
    failed = _status_error(500, "<html>boom</html>", "m")
    assert type(failed) is CloudError and "HTTP 500" in str(failed)


class _Scripted(http.server.BaseHTTPRequestHandler):
    """An upstream that answers /models, and /completions with a scripted status and body
    (what vLLM sends for a prompt beyond its context, or a broken event)."""

    status = 400
    body = b""

    def do_GET(self) -> None:
        self._send(200, b'{"data": [{"id": "m"}]}', "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        kind = "application/json" if self.status != 200 else "text/event-stream"
        self._send(self.status, self.body, kind)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (400, b'{"object": "error", "message": "maximum context length is 8192"}',
         InvalidRequestError, "maximum context length"),
        (200, b'data: {"choices": [{"text": 5, "logprobs": {"tokens": 3}}]}\n\n',
         CloudError, "malformed"),
        (200, b'data: {"error": {"message": "engine died"}}\n\n', CloudError, "engine died"),
    ],
)  # fmt: skip
def test_generate_raises_what_the_upstream_answer_means(
    status: int, body: bytes, error: type[Exception], match: str
) -> None:
    handler = type("Handler", (_Scripted,), {"status": status, "body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    backend = UpstreamBackend.connect(CloudConfig.model_validate({"upstream": {"url": url}}))

    async def scenario() -> None:
        try:
            async for _ in backend.generate(CloudRequest("hi", SamplingParams(max_tokens=2))):
                pass
        finally:
            await backend.aclose()

    try:
        with pytest.raises(error, match=match) as caught:
            asyncio.run(scenario())
        assert type(caught.value) is error
    finally:
        server.shutdown()
        server.server_close()
