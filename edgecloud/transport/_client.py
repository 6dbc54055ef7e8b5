"""The device side's gRPC client for the cloud inference service.

The channel comes from :func:`~edgecloud.transport.create_channel` (TLS, token,
keep-alive, sizes). Retries are gRPC's own (the retry policy in the channel's
service config): jittered exponential backoff on ``UNAVAILABLE`` and
``RESOURCE_EXHAUSTED`` only, and never once a stream has started delivering
tokens. Every ``grpc.RpcError`` leaves this module as an error of the edgecloud
tree (``raise ... from exc``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import grpc

from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud._proto.v1 import inference_pb2_grpc as pb_grpc
from edgecloud.common.lifecycle import AsyncClosing
from edgecloud.common.logs import current_request_id, new_request_id
from edgecloud.common.records import EscalationRecord
from edgecloud.common.text import normalize_prompt
from edgecloud.errors import EdgeCloudError, InvalidRequestError, RemoteError
from edgecloud.transport._channel import create_channel, service_config
from edgecloud.transport._request_id import request_metadata
from edgecloud.transport._serde import (
    chat_to_proto,
    event_from_proto,
    params_to_proto,
    record_to_proto,
)
from edgecloud.transport._status import error_from_rpc
from edgecloud.types import Chunk, Finish, Prompt, Retraction, SamplingParams

__all__ = ["SERVICE_NAME", "CloudClient", "ServiceInfo"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


class ServiceInfo(dict[str, Any]):
    """What ``GetServiceInfo`` returned, as a plain dict (JSON-ready)."""


class CloudClient(AsyncClosing):
    """Streams generations from a cloud inference service.

    Args:
        target: ``host:port``.
        token: bearer token of this device, sent with every call.
        tls: use TLS (default True); False is plain text, to a loopback target only.
        root_certificates: PEM CA (bytes or a file) to trust instead of the system roots.
        client_cert, client_key: PEM pair (bytes or files) for mTLS.
        timeout_s: default deadline of each call.
        max_message_bytes: largest message sent or received.
        max_attempts: gRPC retry attempts on retryable codes (1 disables retries).
        keepalive_s: ping an idle connection this often, to find dead links.
        server_name: verify the server's certificate for this name instead of the
            target's host (a discovered service reached by address).

    Raises:
        ConfigError: plain text to a non-loopback target, or bad TLS material.

    Examples:
        >>> async def main() -> None:                              # doctest: +SKIP
        ...     async with CloudClient("cloud.example:50051", token=tok) as cloud:
        ...         async for event in cloud.stream("Why is the sky blue?", max_tokens=32):
        ...             print(event)
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = True,
        root_certificates: bytes | Path | None = None,
        client_cert: bytes | Path | None = None,
        client_key: bytes | Path | None = None,
        timeout_s: float = 60.0,
        max_message_bytes: int = 1 << 20,
        max_attempts: int = 4,
        keepalive_s: float = 30.0,
        server_name: str | None = None,
    ) -> None:
        self.target = target
        self._timeout = timeout_s
        self._max_message = max_message_bytes
        self._tls = tls
        self._channel = create_channel(
            target,
            aio=True,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            token=token,
            max_message_bytes=max_message_bytes,
            keepalive_s=keepalive_s,
            server_name=server_name,
            service_config=(
                service_config(services=[SERVICE_NAME], max_attempts=max_attempts)
                if max_attempts > 1
                else None
            ),
        )
        self._stub = pb_grpc.InferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def _request(
        self,
        prompt: Prompt,
        params: SamplingParams,
        adapter_id: str | None,
        request_id: str | None,
        timeout_s: float,
        assistant_prefix: str = "",
        skip_knowledge: bool = False,
        verify_prefix: bool = False,
        prefix_logprobs: Sequence[float] = (),
    ) -> pb.GenerateRequest:
        normalized = normalize_prompt(prompt)
        msg = pb.GenerateRequest(
            sampling=params_to_proto(params),
            adapter_id=adapter_id or "",
            request_id=request_id or new_request_id(),
            deadline_unix_ms=int((time.time() + timeout_s) * 1000),
            assistant_prefix=assistant_prefix,
            skip_knowledge=skip_knowledge,
            verify_prefix=verify_prefix,
            prefix_logprobs=list(prefix_logprobs),
        )
        if isinstance(normalized, str):
            msg.prompt = normalized
        else:
            msg.chat.CopyFrom(chat_to_proto(normalized))
        return msg

    @overload
    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        adapter_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        assistant_prefix: str = "",
        skip_knowledge: bool = False,
        verify_prefix: Literal[False] = False,
        prefix_logprobs: Sequence[float] = (),
        **overrides: Any,
    ) -> AsyncIterator[Chunk | Finish]: ...

    @overload
    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        adapter_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        assistant_prefix: str = "",
        skip_knowledge: bool = False,
        verify_prefix: bool = False,
        prefix_logprobs: Sequence[float] = (),
        **overrides: Any,
    ) -> AsyncIterator[Chunk | Finish | Retraction]: ...

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        adapter_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        assistant_prefix: str = "",
        skip_knowledge: bool = False,
        verify_prefix: bool = False,
        prefix_logprobs: Sequence[float] = (),
        **overrides: Any,
    ) -> AsyncIterator[Chunk | Finish | Retraction]:
        """Yield :class:`Chunk` objects (``source="cloud"``), then one :class:`Finish`.

        With ``verify_prefix`` a :class:`Retraction` may come first: the service
        rejected the end of ``assistant_prefix``; its ``kept`` characters stand and
        the chunks continue after them (indices from 0).

        Args:
            prompt: raw text or chat messages.
            params: sampling; ``overrides`` (``max_tokens=...``) replace its fields.
            adapter_id: a LoRA adapter loaded on the service.
            request_id: shown in the service's logs (sent as ``x-request-id`` too); None:
                the id bound on this side (:mod:`edgecloud.common.logs`), else a new one.
            timeout_s: deadline of the whole stream.
            assistant_prefix: the part of the answer already produced (a mid-answer
                hand-off); the service continues after it and streams only what follows.
            skip_knowledge: answer without the service's knowledge base.
            verify_prefix: let the service check ``assistant_prefix`` under its own
                model and knowledge first, keep the longest part it agrees with, and
                continue from there (in the same forward pass as the continuation).
                With ``max_tokens=1`` this is one round of speculative decoding: the
                accepted draft plus one token of the service's own.
            prefix_logprobs: the device's log-probability of each of its prefix
                tokens; with sampling (``temperature > 0``) the service keeps a token
                with probability ``min(1, p/q)`` when it counts as many prefix tokens,
                else it keeps the tokens that are its own greedy choice.

        Raises:
            InvalidRequestError: the request was rejected as invalid.
            UnknownAdapterError: the adapter is not loaded there.
            RemoteError: the service sent a retraction out of turn (a broken service).
            AuthError, OverloadedError, DeadlineExceededError, TransportError.
        """
        base = params or SamplingParams()
        if overrides:
            base = SamplingParams.model_validate({**base.model_dump(), **overrides})
        timeout = self._timeout if timeout_s is None else timeout_s
        request_id = request_id or current_request_id() or new_request_id()
        msg = self._request(
            prompt, base, adapter_id, request_id, timeout, assistant_prefix, skip_knowledge,
            verify_prefix, prefix_logprobs,
        )  # fmt: skip
        if params is None and "max_tokens" not in overrides:
            msg.sampling.max_tokens = 0  # unset: the service's own default applies
        call = self._stub.Generate(msg, timeout=timeout, metadata=request_metadata(request_id))
        retraction_allowed = verify_prefix
        try:
            async for response in call:
                event = event_from_proto(response)
                # A retraction comes at most once, before any chunk, and names the
                # end of the prefix sent; the device takes text back on its word.
                if isinstance(event, Retraction) and not (
                    retraction_allowed
                    and event.kept <= len(assistant_prefix)
                    and event.rejected == assistant_prefix[event.kept :]
                ):
                    raise RemoteError(f"{self.target} sent a retraction out of turn")
                retraction_allowed = False
                yield event
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        finally:
            call.cancel()

    async def upload(
        self, records: Sequence[EscalationRecord], *, timeout_s: float | None = None
    ) -> list[str]:
        """Send escalation records to the service's record store in one call.

        Safe to repeat: the service stores each id once, so a batch whose ack was
        lost can be sent again. Delete local copies only of the ids returned.

        Returns:
            The ids the service acknowledged as durably stored (including ids it
            already had).

        Raises:
            InvalidRequestError: a record was rejected (too large, malformed); nothing
                of this call is acknowledged.
            AuthError, OverloadedError, DeadlineExceededError, TransportError, RemoteError.
        """
        messages = [record_to_proto(r) for r in records]
        if not messages:
            return []
        for msg in messages:
            # gRPC would fail it as RESOURCE_EXHAUSTED, which reads as "retry later";
            # a record too big for any message never fits, so say so plainly.
            if msg.ByteSize() > self._max_message:
                raise InvalidRequestError(
                    f"escalation record {msg.id[:32]!r} is {msg.ByteSize()} bytes; "
                    f"messages are limited to {self._max_message}"
                )
        try:
            ack = await self._stub.UploadEscalations(
                iter(messages),
                timeout=self._timeout if timeout_s is None else timeout_s,
                metadata=request_metadata(current_request_id() or new_request_id()),
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        return list(ack.stored_ids)

    async def info(self, *, timeout_s: float | None = None) -> ServiceInfo:
        """The service's models, adapters, version and load."""
        from google.protobuf.json_format import MessageToDict

        try:
            reply = await self._stub.GetServiceInfo(
                pb.ServiceInfoRequest(),
                timeout=self._timeout if timeout_s is None else timeout_s,
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        return ServiceInfo(
            MessageToDict(
                reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )

    async def health(self, service: str = "", *, timeout_s: float = 5.0) -> bool:
        """Whether the standard health service reports ``SERVING``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _error(self, exc: grpc.RpcError) -> EdgeCloudError:
        return error_from_rpc(exc, self.target, plaintext=not self._tls)

    async def aclose(self) -> None:
        await self._channel.close()

    close = aclose
    """The same as :meth:`aclose`."""
