"""The gRPC servicer: validates requests, streams from the backend, sanitizes errors.

Every error a handler raises goes through :func:`edgecloud.transport.status_for`:
errors raised on purpose keep their message (it was written for the caller);
anything else is logged here with its traceback and reaches the client as
``INTERNAL: internal error``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from edgecloud import __version__
from edgecloud._client import normalize_prompt
from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud._proto.v1 import inference_pb2_grpc as pb_grpc
from edgecloud.cloud._torch import CloudRequest, TorchBackend
from edgecloud.config import CloudConfig
from edgecloud.errors import AuthError, EdgeCloudError
from edgecloud.transport._auth import CURRENT_DEVICE
from edgecloud.transport._serde import event_to_proto, params_from_proto, prompt_from_proto
from edgecloud.transport._status import status_for

__all__ = ["InferenceServicer"]

log = logging.getLogger("edgecloud.cloud")

_MAX_REQUEST_ID = 128


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """``edgecloud.v1.InferenceService`` over a :class:`TorchBackend`."""

    def __init__(self, backend: TorchBackend, config: CloudConfig) -> None:
        self._backend = backend
        self._config = config

    def _request(
        self, msg: pb.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> CloudRequest:
        prompt = normalize_prompt(prompt_from_proto(msg))
        params = params_from_proto(msg.sampling, default_max_tokens=self._config.default_max_tokens)
        adapter = msg.adapter_id or None
        device = CURRENT_DEVICE.get()
        allowed = self._config.auth.adapters.get(device) if device is not None else None
        if adapter is not None and allowed is not None and adapter not in allowed:
            raise _PermissionDenied
        deadline = None
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = time.monotonic() + remaining
        if msg.deadline_unix_ms:
            own = time.monotonic() + (msg.deadline_unix_ms / 1000 - time.time())
            deadline = own if deadline is None else min(deadline, own)
        request_id = msg.request_id[:_MAX_REQUEST_ID] or uuid.uuid4().hex
        return CloudRequest(prompt, params, adapter, request_id, deadline)

    async def Generate(
        self, request: pb.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            cloud_request = self._request(request, context)
            stream = self._backend.generate(cloud_request)
            try:
                async for event in stream:
                    yield event_to_proto(event)
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
        except _PermissionDenied:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "permission denied")
        except EdgeCloudError as exc:
            await self._abort(context, exc)
        except Exception as exc:  # noqa: BLE001 - sanitized below, traceback logged
            await self._abort(context, exc)

    async def GetServiceInfo(
        self, request: pb.ServiceInfoRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServiceInfo:
        info = self._backend.info
        load = self._backend.load_snapshot()
        return pb.ServiceInfo(
            version=__version__,
            models=[info.model],
            adapters=list(info.adapters),
            backend=info.backend,
            device=info.device,
            dtype=info.dtype,
            load=pb.Load(
                running_sequences=load.running,
                queued_requests=load.queued,
                max_running_sequences=load.max_running,
                max_queued_requests=load.max_queued,
            ),
        )

    async def _abort(self, context: aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        code, message = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("Generate failed", exc_info=exc)
        else:
            log.info("Generate rejected: %s: %s", code.name, message)
        await context.abort(code, message)


class _PermissionDenied(AuthError):
    """A known device asked for an adapter it may not use (never leaves the server)."""
