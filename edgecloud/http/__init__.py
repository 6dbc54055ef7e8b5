"""An OpenAI-compatible HTTP endpoint on the device (``edgecloud device serve``).

``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` speak OpenAI's API, so
the official ``openai`` client (and anything built on it) talks to the device model,
and through it to the hybrid engine: an answer may escalate to the cloud or be handed
off mid-answer, and the ``edgecloud`` extension field of every chunk and response says
where the tokens ran and why (see docs/http.md). ``/health`` and ``/metrics``
(Prometheus) serve operators.

FastAPI and uvicorn (the ``http`` extra) load only when an app is built.

Examples:
    >>> from edgecloud.config import Settings
    >>> from edgecloud.http import Server
    >>> with Server(Settings.load(device={"http": {"port": 0}})) as server:  # doctest: +SKIP
    ...     from openai import OpenAI
    ...     client = OpenAI(base_url=server.url, api_key="none")
    ...     model = client.models.list().data[0].id
    ...     reply = client.chat.completions.create(
    ...         model=model, messages=[{"role": "user", "content": "Hi!"}], max_tokens=16)
    ...     print(reply.choices[0].message.content, reply.model_extra["edgecloud"]["source"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.common.lazy import lazy_attributes

if TYPE_CHECKING:
    from edgecloud.http._app import OpenAIServer, Server, create_app, serve

__all__ = ["OpenAIServer", "Server", "create_app", "serve"]

__getattr__ = lazy_attributes(
    __name__, {"OpenAIServer": "_app", "Server": "_app", "create_app": "_app", "serve": "_app"}
)
