"""The ``edgecloud.v1.AdapterSync`` servicer over an :class:`AdapterRegistry`.

Watch streams poll the registry's rollout state (the CLI changes it from
another process), but through one cache per adapter: however many devices
watch, the registry is read at most once per ``poll_s`` per adapter. With
authentication on, the device id is the token's device, whatever the request
claims, so a device cannot take another's place in a staged rollout or report
for it. Errors reach the client as sanitized status codes, never tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from edgecloud._proto.v1 import adapters_pb2 as pb
from edgecloud._proto.v1 import adapters_pb2_grpc as pb_grpc
from edgecloud.adapters._manifest import check_adapter_id, check_file_name
from edgecloud.adapters._registry import AdapterRegistry, RolloutState
from edgecloud.errors import AdapterFormatError, InvalidRequestError
from edgecloud.transport._adapters import AdapterOffer, offer_to_proto
from edgecloud.transport._auth import CURRENT_DEVICE
from edgecloud.transport._status import abort

__all__ = ["SERVICE_NAME", "AdapterSyncServicer"]

log = logging.getLogger("edgecloud.cloud")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdapterSync"].full_name

_MAX_DEVICE_ID = 128
_MAX_COHORT = 64


class AdapterSyncServicer(pb_grpc.AdapterSyncServicer):
    """Serves rollout assignments, version files and fleet reports from a registry.

    Args:
        registry: where versions and rollout state live.
        chunk_bytes: bytes per ``FileChunk`` (``cloud.registry.chunk_bytes``).
        poll_s: how often watch streams look for rollout changes.
    """

    def __init__(
        self, registry: AdapterRegistry, *, chunk_bytes: int = 256 * 1024, poll_s: float = 0.5
    ) -> None:
        self._registry = registry
        self._chunk = chunk_bytes
        self._poll = poll_s
        self._states: dict[str, tuple[float, RolloutState]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing = False

    def close(self) -> None:
        """End watch streams at their next poll (they would otherwise hold a graceful
        shutdown for its whole grace period); devices reconnect elsewhere or later."""
        self._closing = True

    async def _state(self, adapter_id: str) -> RolloutState:
        lock = self._locks.setdefault(adapter_id, asyncio.Lock())
        async with lock:
            cached = self._states.get(adapter_id)
            if cached is not None and time.monotonic() - cached[0] < self._poll:
                return cached[1]
            state = await asyncio.to_thread(self._registry.rollout_state, adapter_id)
            self._states[adapter_id] = (time.monotonic(), state)
            return state

    def _offer(self, adapter_id: str, version: int | None) -> AdapterOffer:
        if version is None:
            return AdapterOffer(adapter_id, 0)
        signed = self._registry.manifest(adapter_id, version)
        return AdapterOffer(
            adapter_id, version, signed.manifest_json, signed.signature, signed.key_id
        )

    async def WatchAdapters(
        self, request: pb.WatchRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.AdapterOffer]:
        try:
            adapter_id = _adapter_id(request.adapter_id)
            device = _device(request.device_id)
            if len(request.cohort) > _MAX_COHORT:
                raise InvalidRequestError(f"cohort longer than {_MAX_COHORT} characters")
            cohort = request.cohort or None
            sent: int | None = -1
            while not self._closing:
                state = await self._state(adapter_id)
                version = AdapterRegistry.assigned_in(state, adapter_id, device, cohort)
                if version != sent:
                    offer = await asyncio.to_thread(self._offer, adapter_id, version)
                    log.info("offer %s v%d to %s", adapter_id, offer.version, device)
                    yield offer_to_proto(offer)
                    sent = version
                await asyncio.sleep(self._poll)
        except Exception as exc:  # noqa: BLE001 - abort sanitizes it; the traceback stays in the log
            await abort(context, exc, rpc="WatchAdapters", log=log)

    async def FetchAdapter(
        self, request: pb.FetchRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FileChunk]:
        try:
            adapter_id = _adapter_id(request.adapter_id)
            try:
                name = check_file_name(request.name)
            except AdapterFormatError as exc:
                raise InvalidRequestError(str(exc)) from None
            if request.offset < 0:
                raise InvalidRequestError("offset must be >= 0")
            f = await asyncio.to_thread(
                self._registry.open_file, adapter_id, request.version, name, request.offset
            )
            try:
                offset = request.offset
                while True:
                    data = await asyncio.to_thread(f.read, self._chunk)
                    if not data:
                        break
                    yield pb.FileChunk(offset=offset, data=data)
                    offset += len(data)
            finally:
                f.close()
        except Exception as exc:  # noqa: BLE001 - abort sanitizes it; the traceback stays in the log
            await abort(context, exc, rpc="FetchAdapter", log=log)

    async def ReportAdapter(
        self, request: pb.AdapterReport, context: aio.ServicerContext[Any, Any]
    ) -> pb.ReportAck:
        try:
            adapter_id = _adapter_id(request.adapter_id)
            device = _device(request.device_id)
            await asyncio.to_thread(
                self._registry.report,
                device, adapter_id, request.version, request.status, request.detail,
            )  # fmt: skip
            return pb.ReportAck()
        except Exception as exc:  # noqa: BLE001 - abort sanitizes it; the traceback stays in the log
            await abort(context, exc, rpc="ReportAdapter", log=log)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _adapter_id(value: str) -> str:
    try:
        return check_adapter_id(value)
    except AdapterFormatError as exc:
        raise InvalidRequestError(str(exc)) from None


def _device(claimed: str) -> str:
    """The authenticated device, else the id the request claims (auth off)."""
    device = CURRENT_DEVICE.get() or claimed
    if not device or len(device) > _MAX_DEVICE_ID:
        raise InvalidRequestError(f"device_id must be 1-{_MAX_DEVICE_ID} characters")
    return device
