"""A stand-in for vLLM's OpenAI server with runtime LoRA loading, on a loopback port.

vLLM cannot be installed or run here (it needs a GPU build), so the ``openai`` cloud
backend's runtime adapter loading (``cloud.upstream.load_adapters``) is tested against
this small real HTTP server instead. It implements only what that feature uses, as
vLLM documents and implements it (``vllm/entrypoints/openai/serving_models.py``, served
with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``):

- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200 with a plain-text
  success line; 400 ``InvalidUserInput`` when the name is already loaded or a field is
  missing; 404 ``NotFoundError`` "No adapter found for <path>" when the path holds no
  ``adapter_config.json``; 400 ``BadRequestError`` when the LoRA's rank is above
  ``--max-lora-rank`` (the engine's own check).
- ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: 200, or 404 when not loaded.
- ``GET /v1/models``: the base model and the loaded LoRAs.
- ``POST /v1/completions`` with ``stream=True``: Server-Sent Events whose text says which
  model served it (``" served by <model>"``, a word a token, with logprobs), then usage
  and ``[DONE]``; 404 for a model that is neither the base nor a loaded LoRA.

Errors use vLLM's JSON body ``{"error": {"message", "type", "param", "code"}}``. Every
load and unload is recorded in :attr:`VllmStandIn.calls`, and the most loads ever in
progress at once in :attr:`VllmStandIn.max_parallel_loads`. Tests can make loads fail
with a 5xx (:attr:`VllmStandIn.fail_loads`) and keep the streams of some models open
(:attr:`VllmStandIn.hold`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

__all__ = ["VllmStandIn", "vllm_standin"]


class VllmStandIn:
    """The server's state: base model, loaded LoRAs (name -> path), the calls made."""

    def __init__(
        self, model: str, *, max_lora_rank: int, load_delay_s: float, sees: Path | None
    ) -> None:
        self.model = model
        self.sees = sees
        self.max_lora_rank = max_lora_rank
        self.load_delay_s = load_delay_s
        self.loras: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []  # ("load" | "unload", lora_name)
        self.served: list[str] = []  # the model of each completion
        self.max_parallel_loads = 0
        self.fail_loads = 0  # an HTTP status (5xx) every load answers with; 0: none
        self.hold: set[str] = set()  # models whose streams wait before they finish
        self._loading = 0
        self.url = ""

    def app(self) -> Any:
        """The FastAPI application."""
        app = FastAPI()

        def error(message: str, kind: str, code: int) -> JSONResponse:
            body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
            return JSONResponse(body, status_code=code)

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            names = [self.model, *self.loras]
            return {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> Response:
            body = await request.json()
            name, path = body.get("lora_name"), body.get("lora_path")
            self.calls.append(("load", str(name)))
            if not name or not path:
                return error("Both 'lora_name' and 'lora_path' must be provided.",
                             "InvalidUserInput", 400)  # fmt: skip
            if name in self.loras:
                return error(f"The lora adapter '{name}' has already been loaded.",
                             "InvalidUserInput", 400)  # fmt: skip
            if self.fail_loads:
                return error("CUDA error: out of memory", "InternalServerError", self.fail_loads)
            self._loading += 1
            self.max_parallel_loads = max(self.max_parallel_loads, self._loading)
            try:
                await asyncio.sleep(self.load_delay_s)  # reading and placing the weights
                config = Path(path) / "adapter_config.json"
                hidden = self.sees is not None and not config.is_relative_to(self.sees)
                if hidden or not config.is_file():
                    return error(f"Loading lora {name} failed: No adapter found for {path}",
                                 "NotFoundError", 404)  # fmt: skip
                rank = int(json.loads(config.read_text()).get("r", 0))
                if rank > self.max_lora_rank:
                    return error(f"LoRA rank {rank} is greater than max_lora_rank "
                                 f"{self.max_lora_rank}.", "BadRequestError", 400)  # fmt: skip
                self.loras[name] = str(path)
            finally:
                self._loading -= 1
            return Response(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> Response:
            name = (await request.json()).get("lora_name")
            self.calls.append(("unload", str(name)))
            if self.loras.pop(name, None) is None:
                return error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
            return Response(f"Success: LoRA adapter '{name}' removed successfully.")

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await request.json()
            model = body.get("model")
            if model != self.model and model not in self.loras:
                return error(f"The model `{model}` does not exist.", "NotFoundError", 404)
            self.served.append(str(model))
            return StreamingResponse(self._stream(str(model), int(body.get("max_tokens") or 16)),
                                     media_type="text/event-stream")  # fmt: skip

        return app

    async def _stream(self, model: str, max_tokens: int) -> AsyncIterator[str]:
        words = [" served", " by", f" {model}"]
        tokens = words[:max_tokens]
        for tok in tokens:
            lp = {"tokens": [tok], "token_logprobs": [-0.1], "top_logprobs": [{tok: -0.1}]}
            choice = {"index": 0, "text": tok, "logprobs": lp, "finish_reason": None}
            yield f"data: {json.dumps({'model': model, 'choices': [choice]})}\n\n"
        while model in self.hold:  # a long answer, still streaming
            await asyncio.sleep(0.01)
        reason = "stop" if len(tokens) == len(words) else "length"
        end = {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}
        yield f"data: {json.dumps({'model': model, 'choices': [end]})}\n\n"
        usage = {"prompt_tokens": 5, "completion_tokens": len(tokens)}
        yield f"data: {json.dumps({'model': model, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"


@contextlib.contextmanager
def vllm_standin(
    model: str = "base-model",
    *,
    max_lora_rank: int = 16,
    load_delay_s: float = 0.0,
    sees: Path | None = None,
) -> Iterator[VllmStandIn]:
    """A :class:`VllmStandIn` serving on a free 127.0.0.1 port (``.url`` ends in /v1),
    in a thread of this process; stopped on exit.

    Args:
        sees: the only directory whose files the server can read (None: all), as a vLLM
            on another host sees only the volumes mounted into it.
    """
    import uvicorn

    state = VllmStandIn(model, max_lora_rank=max_lora_rank, load_delay_s=load_delay_s,
                        sees=sees)  # fmt: skip
    config = uvicorn.Config(state.app(), host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="vllm-standin", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the vLLM stand-in did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        state.url = f"http://127.0.0.1:{port}/v1"
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
