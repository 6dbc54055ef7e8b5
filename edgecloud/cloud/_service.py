"""The gRPC servicer: validates requests, streams from the backend, sanitizes errors.

Every error a handler raises goes through :func:`edgecloud.transport.status_for`:
errors raised on purpose keep their message (it was written for the caller);
anything else is logged here with its traceback and reaches the client as
``INTERNAL: internal error``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud._proto.v1 import inference_pb2_grpc as pb_grpc
from edgecloud._version import __version__
from edgecloud.cloud._backend import CloudBackend, CloudRequest
from edgecloud.cloud._prompting import question_of
from edgecloud.cloud._records import RecordStore
from edgecloud.cloud._settings import CloudConfig
from edgecloud.common.logs import (
    clean_request_id,
    current_request_id,
    new_request_id,
    set_request_id,
)
from edgecloud.common.metrics import TokenClock, metrics
from edgecloud.common.records import EscalationRecord
from edgecloud.common.text import normalize_prompt
from edgecloud.errors import AuthError, DeadlineExceededError, InvalidRequestError
from edgecloud.transport._auth import CURRENT_DEVICE
from edgecloud.transport._serde import (
    event_to_proto,
    params_from_proto,
    prompt_from_proto,
    record_from_proto,
    verification_from_proto,
)
from edgecloud.transport._status import abort, count_error
from edgecloud.types import ChatMessage, Chunk, Finish, Passage

if TYPE_CHECKING:
    from edgecloud.cloud._knowledge import KnowledgeBase

__all__ = ["InferenceServicer", "question_of"]

log = logging.getLogger("edgecloud.cloud")

_MAX_RECORDS_PER_UPLOAD = 10_000


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """``edgecloud.v1.InferenceService`` over any :class:`~edgecloud.cloud.CloudBackend`.

    What is the same for every engine happens here: ``max_tokens`` is checked
    against ``cloud.max_new_tokens``, a device's adapter against the ones it may
    use, knowledge passages are retrieved, put into the request and reported in
    the :class:`~edgecloud.types.Finish`. A backend's
    :class:`~edgecloud.types.Retraction` (a verified prefix it partly rejected)
    goes out as ``Retract``.
    """

    def __init__(
        self,
        backend: CloudBackend,
        config: CloudConfig,
        *,
        knowledge: KnowledgeBase | None = None,
        records: RecordStore | None = None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._knowledge = knowledge
        self._records = records

    async def _passages(self, prompt: str | list[ChatMessage]) -> tuple[Passage, ...]:
        kb, cfg = self._knowledge, self._config.knowledge
        if kb is None or not cfg.enabled:
            return ()
        question = question_of(prompt)
        # Embedding the question is CPU work: keep it off the event loop.
        found = await asyncio.to_thread(kb.search, question, cfg.top_k, cfg.min_score)
        return tuple(found)

    def _request(
        self, msg: pb.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> CloudRequest:
        prompt = normalize_prompt(prompt_from_proto(msg))
        params = params_from_proto(msg.sampling, default_max_tokens=self._config.default_max_tokens)
        if params.max_tokens > self._config.max_new_tokens:
            raise InvalidRequestError(
                f"max_tokens {params.max_tokens} exceeds the service limit "
                f"{self._config.max_new_tokens}"
            )
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
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceededError("the request's deadline passed before it was served")
        request_id = clean_request_id(msg.request_id) or current_request_id() or new_request_id()
        verify, logprobs = verification_from_proto(msg)
        return CloudRequest(
            prompt,
            params,
            adapter,
            request_id,
            deadline,
            assistant_prefix=msg.assistant_prefix,
            verify_prefix=verify,
            prefix_logprobs=logprobs,
        )

    async def Generate(
        self, request: pb.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateResponse]:
        watch = _Watch(request)
        try:
            cloud_request = self._request(request, context)
            if current_request_id() is None:  # a caller that sent no x-request-id
                set_request_id(cloud_request.request_id)
            passages: tuple[Passage, ...] = ()
            if not request.skip_knowledge:
                passages = await self._passages(cloud_request.prompt)
                if passages:
                    cloud_request = dataclasses.replace(cloud_request, passages=passages)
            stream = self._backend.generate(cloud_request)
            try:
                async for event in stream:
                    if isinstance(event, Chunk):
                        watch.token()
                    elif isinstance(event, Finish):
                        watch.finish = event.reason
                        if passages:
                            event = dataclasses.replace(event, passages=passages)
                    yield event_to_proto(event)
            finally:
                await stream.aclose()
        except _PermissionDenied:
            count_error("Generate", grpc.StatusCode.PERMISSION_DENIED)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "permission denied")
        except Exception as exc:  # noqa: BLE001 - abort sanitizes it; the traceback stays in the log
            await abort(context, exc, rpc="Generate", log=log)
        except (GeneratorExit, asyncio.CancelledError):
            watch.finish = "cancelled"  # the caller went away
            raise
        finally:
            watch.done()

    async def UploadEscalations(
        self,
        request_iterator: AsyncIterator[pb.EscalationRecord],
        context: aio.ServicerContext[Any, Any],
    ) -> pb.UploadAck:
        """Store the streamed records in one transaction, then ack every id.

        All or nothing: a bad or oversized record fails the call and nothing of it
        is stored, so the device keeps the whole batch and can see which record to drop.
        """
        try:
            if self._records is None:
                raise _Unavailable
            limit = self._config.records.max_record_bytes
            records: list[EscalationRecord] = []
            async for msg in request_iterator:
                size = msg.ByteSize()
                if size > limit:
                    raise InvalidRequestError(
                        f"escalation record {msg.id[:32]!r} is {size} bytes; "
                        f"the service accepts at most {limit}"
                    )
                if len(records) >= _MAX_RECORDS_PER_UPLOAD:
                    raise InvalidRequestError(
                        f"at most {_MAX_RECORDS_PER_UPLOAD} records per upload"
                    )
                records.append(record_from_proto(msg))
            device = CURRENT_DEVICE.get()
            # The commit (fsync) blocks: run it off the loop; the ack waits for it.
            stored = await asyncio.to_thread(self._records.store, records, device=device)
            metrics().records_stored.inc(len(stored))
            log.info("stored %d escalation records", len(stored), extra={"records": len(stored)})
            return pb.UploadAck(stored_ids=stored)
        except _Unavailable:
            count_error("UploadEscalations", grpc.StatusCode.UNIMPLEMENTED)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this service stores no records")
        except Exception as exc:  # noqa: BLE001 - abort sanitizes it; the traceback stays in the log
            await abort(context, exc, rpc="UploadEscalations", log=log)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

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


class _Watch:
    """One Generate call's metrics and its closing log line: times each token, counts
    the request (route ``answer``, ``continue`` or ``verify``; ``finish`` ``error``
    when it raised) when the call ends."""

    __slots__ = ("_clock", "_route", "finish", "tokens")

    def __init__(self, msg: pb.GenerateRequest) -> None:
        self._clock = TokenClock("cloud")
        self._route = (
            "verify" if msg.verify_prefix else "continue" if msg.assistant_prefix else "answer"
        )
        self.tokens = 0
        self.finish = "error"

    def token(self) -> None:
        self._clock.tick()
        self.tokens += 1

    def done(self) -> None:
        m = metrics()
        m.requests.labels("cloud", self._route, self.finish).inc()
        if self.tokens:
            m.tokens.labels("cloud", "cloud").inc(self.tokens)
        fields = {"route": self._route, "finish": self.finish, "tokens": self.tokens}
        log.info("Generate (%(route)s) ended: %(finish)s, %(tokens)d tokens", fields, extra=fields)


class _PermissionDenied(AuthError):
    """A known device asked for an adapter it may not use (never leaves the server)."""


class _Unavailable(Exception):
    """The service was started without a record store (never leaves the server)."""
