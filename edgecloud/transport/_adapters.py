"""The device side of adapter sync: watch assignments, fetch files (resumable), report.

Also the protobuf <-> plain conversions of ``edgecloud.v1.AdapterSync`` (this
package is the one serde boundary). Every ``grpc.RpcError`` leaves as an error
of the edgecloud tree.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from edgecloud._proto.v1 import adapters_pb2 as pb
from edgecloud._proto.v1 import adapters_pb2_grpc as pb_grpc
from edgecloud.common.files import hash_file
from edgecloud.common.lifecycle import AsyncClosing
from edgecloud.errors import AdapterIntegrityError
from edgecloud.transport._client import CloudClient

__all__ = [
    "AdapterOffer",
    "AdapterSyncClient",
    "offer_from_proto",
    "offer_to_proto",
    "partial_path",
]

_HASH_BLOCK = 1 << 20
_MAX_MESSAGE = 17 << 20


@dataclass(frozen=True)
class AdapterOffer:
    """A version the cloud assigns to this device (``version == 0``: the base model).

    ``manifest_json`` is exactly what was signed; verify it before trusting it.
    """

    adapter_id: str
    version: int
    manifest_json: bytes = b""
    signature: bytes = b""
    key_id: str = ""


def offer_to_proto(offer: AdapterOffer) -> pb.AdapterOffer:
    return pb.AdapterOffer(
        adapter_id=offer.adapter_id,
        version=offer.version,
        manifest_json=offer.manifest_json,
        signature=offer.signature,
        key_id=offer.key_id,
    )


def offer_from_proto(msg: pb.AdapterOffer) -> AdapterOffer:
    return AdapterOffer(
        adapter_id=msg.adapter_id,
        version=int(msg.version),
        manifest_json=bytes(msg.manifest_json),
        signature=bytes(msg.signature),
        key_id=msg.key_id,
    )


def partial_path(dest: Path) -> Path:
    """Where :meth:`AdapterSyncClient.fetch` keeps the bytes received so far."""
    return dest.with_name(dest.name + ".partial")


class AdapterSyncClient(AsyncClosing):
    """Talks to a cloud's ``edgecloud.v1.AdapterSync`` service.

    Args:
        target: ``host:port``, or a :class:`CloudClient` whose channel (TLS, token,
            keep-alive) is shared: one connection per cloud.
        timeout_s: default deadline of fetch and report calls (watch has none).
        channel: the :class:`CloudClient` arguments (``token``, ``tls``,
            ``root_certificates``, ``client_cert``, ``client_key``,
            ``max_message_bytes``, ``keepalive_s``) when ``target`` is an address.

    Examples:
        >>> async def main() -> None:                                  # doctest: +SKIP
        ...     async with AdapterSyncClient("cloud:50051", token=tok) as sync:
        ...         async for offer in sync.watch("default", device_id="robot-7"):
        ...             print(offer.version)
    """

    def __init__(
        self, target: str | CloudClient, *, timeout_s: float = 120.0, **channel: Any
    ) -> None:
        if isinstance(target, CloudClient):
            self._cloud, self._owns = target, False
        else:
            # Room for the largest FetchAdapter chunk (cloud.registry.chunk_bytes <= 16 MiB).
            channel.setdefault("max_message_bytes", _MAX_MESSAGE)
            self._cloud, self._owns = CloudClient(target, timeout_s=timeout_s, **channel), True
        self.target = self._cloud.target
        self._timeout = timeout_s
        # Same package: the CloudClient's channel (create_channel: credentials, token,
        # keep-alive) is the one connection; this client only adds a stub on it.
        self._stub = pb_grpc.AdapterSyncStub(self._cloud._channel)  # type: ignore[no-untyped-call]

    @property
    def cloud(self) -> CloudClient:
        """The cloud client whose channel this one shares."""
        return self._cloud

    async def watch(
        self,
        adapter_id: str,
        *,
        device_id: str = "",
        cohort: str | None = None,
        current_version: int = 0,
    ) -> AsyncIterator[AdapterOffer]:
        """Yield the assigned version at once, then each change, until the stream breaks.

        Raises:
            InvalidRequestError: a bad adapter id or device id.
            AuthError, TransportError, RemoteError: the stream could not be kept.
        """
        request = pb.WatchRequest(
            adapter_id=adapter_id,
            device_id=device_id,
            cohort=cohort or "",
            current_version=current_version,
        )
        call = self._stub.WatchAdapters(request)
        try:
            async for msg in call:
                yield offer_from_proto(msg)
        except grpc.RpcError as exc:
            raise self._cloud._error(exc) from exc
        finally:
            call.cancel()

    async def fetch(
        self,
        adapter_id: str,
        version: int,
        name: str,
        dest: Path,
        *,
        expected_sha256: str,
        expected_size: int,
        timeout_s: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Download one file of a version to ``dest``, resuming a previous attempt.

        Bytes go to ``dest.partial`` first; a later call continues from its size.
        ``dest`` appears (atomically renamed) only once the whole file has the
        expected size and sha256.

        Raises:
            AdapterIntegrityError: the stream ended early (the partial file is kept to
                resume), or the file is longer than expected or has another sha256
                (the partial file is deleted: its bytes cannot be trusted).
            UnknownAdapterError: no such version or file on the service.
            TransportError, AuthError, DeadlineExceededError: the partial file is kept.
        """
        partial = partial_path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest: Any = hashlib.sha256()
        offset = 0
        if partial.exists():
            if partial.stat().st_size > expected_size:
                partial.unlink()
            else:
                digest, offset = await asyncio.to_thread(hash_file, partial)
        if offset < expected_size:
            offset = await self._download(
                (adapter_id, version, name), partial, digest, offset, expected_size,
                timeout_s, progress,
            )  # fmt: skip
        if offset < expected_size:
            raise AdapterIntegrityError(
                f"{name}: download ended at {offset} of {expected_size} bytes (truncated)"
            )
        actual = digest.hexdigest()
        if actual != expected_sha256:
            partial.unlink(missing_ok=True)
            raise AdapterIntegrityError(
                f"{name}: sha256 {actual} differs from the manifest's {expected_sha256}"
            )
        os.replace(partial, dest)
        return dest

    async def _download(
        self,
        what: tuple[str, int, str],
        partial: Path,
        digest: Any,
        offset: int,
        expected_size: int,
        timeout_s: float | None,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        adapter_id, version, name = what
        request = pb.FetchRequest(adapter_id=adapter_id, version=version, name=name, offset=offset)
        timeout = self._timeout if timeout_s is None else timeout_s
        call = self._stub.FetchAdapter(request, timeout=timeout)
        with partial.open("ab") as f:
            try:
                async for chunk in call:
                    data = bytes(chunk.data)
                    if chunk.offset != offset or offset + len(data) > expected_size:
                        f.close()
                        partial.unlink(missing_ok=True)
                        raise AdapterIntegrityError(
                            f"{name}: the service sent bytes {chunk.offset}..+{len(data)} "
                            f"while {offset} of {expected_size} were expected"
                        )
                    f.write(data)
                    digest.update(data)
                    offset += len(data)
                    if progress is not None:
                        progress(offset, expected_size)
            except grpc.RpcError as exc:
                raise self._cloud._error(exc) from exc
            finally:
                call.cancel()
                if not f.closed:
                    # Durable before the next attempt resumes from this size.
                    f.flush()
                    os.fsync(f.fileno())
        return offset

    async def report(
        self,
        adapter_id: str,
        version: int,
        status: str,
        *,
        device_id: str = "",
        detail: str = "",
        timeout_s: float | None = None,
    ) -> None:
        """Tell the service which version this device runs (0: the base) or why it refused one.

        Raises:
            InvalidRequestError, AuthError, TransportError, RemoteError.
        """
        msg = pb.AdapterReport(
            device_id=device_id,
            adapter_id=adapter_id,
            version=version,
            status=status,
            detail=detail,
        )
        try:
            await self._stub.ReportAdapter(
                msg,
                timeout=self._timeout if timeout_s is None else timeout_s,
            )
        except grpc.RpcError as exc:
            raise self._cloud._error(exc) from exc

    async def aclose(self) -> None:
        """Close the channel, unless it belongs to a :class:`CloudClient` passed in."""
        if self._owns:
            await self._cloud.close()

    close = aclose
    """The same as :meth:`aclose`."""
