"""The seam between the inference service and a cloud engine (pure Python, no torch).

The gRPC servicer (``edgecloud.cloud._service``) and the server speak to an engine
only through :class:`CloudBackend`; :class:`~edgecloud.cloud.TorchBackend` is one
implementation (a transformers model behind the continuous-batching scheduler),
and an engine that forwards to another service (an OpenAI-compatible upstream, a
Ray Serve deployment) is another. The service does what is the same for every
engine: it validates the request against ``cloud.*`` limits and the device's
allowed adapters, retrieves knowledge passages, reports them in the
:class:`~edgecloud.types.Finish`, and maps errors to gRPC status codes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

from edgecloud.types import ChatMessage, Chunk, Finish, Passage, Retraction, SamplingParams

__all__ = ["BackendInfo", "CloudBackend", "CloudRequest", "LoadSnapshot"]


@dataclass(frozen=True, slots=True)
class CloudRequest:
    """One generation as the service hands it to a backend (already validated)."""

    prompt: str | list[ChatMessage]
    params: SamplingParams
    adapter_id: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deadline: float | None = None
    """``time.monotonic()`` after which the request is cancelled."""
    assistant_prefix: str = ""
    """Answer text already produced elsewhere; generation continues after it."""
    passages: tuple[Passage, ...] = ()
    """Knowledge passages to put into the prompt (``cloud.model.prompt_format``)."""
    verify_prefix: bool = False
    """Check ``assistant_prefix`` first and continue after the part the model agrees with."""
    prefix_logprobs: tuple[float, ...] = ()
    """The device's log-probability of each prefix token (speculative sampling's ``q``)."""


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a cloud backend serves, as ``GetServiceInfo`` reports it."""

    backend: str
    """The kind of engine (``"torch"``, ...)."""
    model: str
    adapters: tuple[str, ...]
    """The adapter ids a request may name in ``adapter_id``."""
    device: str
    dtype: str


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """How busy a backend is right now (``GetServiceInfo``'s ``load``)."""

    running: int
    queued: int
    max_running: int
    max_queued: int


class CloudBackend(Protocol):
    """What the inference service needs from a cloud engine.

    Every method is called from the service's event loop; an engine whose work
    blocks (a model forward, a file read) does it in its own threads.
    """

    @property
    def info(self) -> BackendInfo:
        """The model and adapters served, and where they run."""
        ...

    def load_snapshot(self) -> LoadSnapshot:
        """Sequences running and waiting now, and the limits of both (cheap, non-blocking)."""
        ...

    def generate(self, request: CloudRequest) -> AsyncGenerator[Chunk | Finish | Retraction, None]:
        """Stream the answer to ``request``: chunks, then exactly one :class:`Finish`.

        The contract every engine keeps:

        - Each :class:`Chunk` is one generated token with ``source="cloud"``, its
          ``index`` counting from 0, its ``logprob`` (natural log) and the
          ``entropy`` (nats) of the distribution it was drawn from: devices judge
          the cloud's confidence by them as they judge their own. A chunk with
          ``token_id == -1`` carries text only (a flush at the end) and no signals.
        - ``request.assistant_prefix`` is answer text produced elsewhere (a device's
          mid-answer hand-off): continue the answer after it; stream only what follows
          and count only that in ``Finish.completion_tokens``.
        - ``request.verify_prefix``: judge the prefix first, under the engine's own
          model and prompt (passages included), and keep its longest part the model
          agrees with: a token stands when it is the model's greedy choice, or, with
          ``temperature > 0`` and one ``prefix_logprobs`` value per prefix token, with
          probability ``min(1, p/q)``. When part of the prefix is rejected, yield one
          :class:`Retraction` first (``kept`` characters of the prefix stand, a prefix
          of the text; ``rejected`` is the rest), then continue after the kept text;
          no Retraction when all of it stands. With ``max_tokens=1`` this is a round
          of speculative decoding: the accepted draft plus one new token.
        - ``request.adapter_id`` names one of ``info.adapters`` (None: the base model).
        - ``request.passages``: put them into the prompt; the service reports them in
          the ``Finish`` itself.
        - Stop at ``params.stop``, ``params.max_tokens`` and ``request.deadline``
          (finish ``"cancelled"`` then); closing the generator cancels the request
          and frees what it holds.

        Errors may be raised on the first ``__anext__``.

        Raises:
            InvalidRequestError: the prompt does not fit the model's context.
            UnknownAdapterError: ``adapter_id`` is not served.
            OverloadedError: no room to run or queue the request now.
            CloudError: the engine failed.
        """
        ...

    async def aclose(self) -> None:
        """Stop the engine and release what it holds; requests still running end."""
        ...
