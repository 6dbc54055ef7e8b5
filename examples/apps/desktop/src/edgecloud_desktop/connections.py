"""Where answers come from: the model on this computer, or a device's endpoint on the LAN.

Both yield the same :class:`~edgecloud_desktop.events.Delta` and
:class:`~edgecloud_desktop.events.Final` events. :class:`LocalConnection` needs the
edgecloud SDK with llama.cpp (desktop builds); :class:`HttpConnection` needs only httpx,
which is all the phone builds carry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import httpx

from edgecloud_desktop.devices import DeviceEntry
from edgecloud_desktop.events import Delta, Event, Final
from edgecloud_desktop.sse import StreamError, error_message, events

MAX_TOKENS = 48
"""Short answers: the few-shot prompt asks for one line."""


class Connection(Protocol):
    """Something that answers a prompt as a stream of events."""

    @property
    def label(self) -> str: ...

    def answer(
        self, prompt: str, *, stop: Sequence[str], max_tokens: int = MAX_TOKENS
    ) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


class LocalConnection:
    """The model in this process, through the SDK's :class:`edgecloud.AsyncClient`.

    The model loads on the first question (``AsyncClient.open()``: the default embedded
    model, or ``EDGECLOUD_*`` settings and ``edgecloud.toml``), in a worker thread, so the
    window stays responsive. Cloud endpoints in those settings make it a hybrid device:
    answers may escalate, and say so.
    """

    label = "this computer"

    def __init__(self, client: Any = None, **open_options: Any) -> None:
        self._client = client
        self._open_options = open_options
        self._opening = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._client is not None

    async def client(self) -> Any:
        async with self._opening:
            if self._client is None:
                from edgecloud import AsyncClient

                self._client = await AsyncClient.open(**self._open_options)
            return self._client

    async def answer(
        self, prompt: str, *, stop: Sequence[str], max_tokens: int = MAX_TOKENS
    ) -> AsyncIterator[Event]:
        client = await self.client()
        async with client.stream(prompt, max_tokens=max_tokens, stop=list(stop)) as stream:
            async for chunk in stream:
                if chunk.text or chunk.retracted:
                    yield Delta(chunk.text, chunk.source, chunk.retracted)
        yield Final.from_result(stream.result)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class HttpConnection:
    """A device's OpenAI-compatible endpoint (``edgecloud device serve``), read with
    httpx as server-sent events.

    It asks for ``show_unverified``: local tokens stream as they are generated even on a
    device with a cloud, and a hand-off's ``retracted`` count takes back what the cloud
    rejected (the transcript applies it).
    """

    def __init__(
        self,
        device: DeviceEntry,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self.device = device
        self.api_key = api_key or None
        self.timeout = timeout or httpx.Timeout(10.0, read=120.0)

    @property
    def label(self) -> str:
        return self.device.name

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _model(self, http: httpx.AsyncClient) -> str:
        """The served model's id: announced, else the one entry of ``/v1/models``."""
        if self.device.model:
            return self.device.model
        r = await http.get(f"{self.device.url}/models", headers=self._headers())
        _check(r.status_code, r.content)
        return str(r.json()["data"][0]["id"])

    async def answer(
        self, prompt: str, *, stop: Sequence[str], max_tokens: int = MAX_TOKENS
    ) -> AsyncIterator[Event]:
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            body = {
                "model": await self._model(http),
                "prompt": prompt,
                "stream": True,
                "max_tokens": max_tokens,
                "stop": list(stop),
                "edgecloud": {"show_unverified": True},
            }
            url = f"{self.device.url}/completions"
            async with http.stream("POST", url, json=body, headers=self._headers()) as r:
                if r.status_code != 200:
                    _check(r.status_code, await r.aread())
                async for event in events(r.aiter_lines()):
                    yield event

    async def aclose(self) -> None:
        """Nothing held between questions: each one opens its own HTTP connection."""


def _check(status: int, content: bytes) -> None:
    if status == 200:
        return
    try:
        message = error_message(json.loads(content))
    except ValueError:
        message = content[:200].decode(errors="replace") or "no details"
    hint = " (set the device's API key)" if status == 401 else ""
    raise StreamError(f"HTTP {status}: {message}{hint}")
