"""The one builder of grpc.aio servers: credentials, auth, health, reflection, drain.

The cloud service (inference + adapter sync) and the split service (split +
KServe v2) are both built by :func:`create_server`:

* TLS from a :class:`TlsConfig` (mTLS when ``client_ca`` is set), or plain text
  when asked for (``insecure``) on a loopback host only
  (:func:`~edgecloud.transport.check_plaintext`);
* the bearer-token interceptor when :class:`AuthConfig` has tokens, first, so an
  unauthenticated caller learns nothing; then the request id (``x-request-id``
  bound for the call's log lines); then the caller's interceptors; then
  the decode guard (undecodable requests get ``INVALID_ARGUMENT``);
* the standard health service, with a status per service, and reflection of
  every registered service;
* message size limits;
* :meth:`GrpcServer.drain`: health turns ``NOT_SERVING`` first, then new calls
  are refused and in-flight ones get a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from edgecloud.errors import ConfigError
from edgecloud.transport._auth import TokenAuthInterceptor
from edgecloud.transport._channel import check_plaintext
from edgecloud.transport._guard import DecodeGuardInterceptor
from edgecloud.transport._request_id import RequestIdInterceptor
from edgecloud.transport._settings import AuthConfig, TlsConfig

__all__ = ["GrpcServer", "create_server", "server_credentials", "stop_signals"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


def server_credentials(
    tls: TlsConfig | None, *, host: str, insecure: bool, section: str
) -> grpc.ServerCredentials | None:
    """TLS credentials from ``tls``, or None for plain text (loopback only).

    Args:
        tls: certificate, key and optional client CA; None or no certificate: plain text.
        host: the address the server listens on.
        insecure: whether plain text was asked for (``<section>.insecure``).
        section: the settings section, named in errors (``cloud``, ``split.serve``).

    Raises:
        ConfigError: TLS is half-configured, a file cannot be read, plain text was not
            asked for, or plain text was asked for off loopback.
    """
    cert = tls.cert if tls is not None else None
    key = tls.key if tls is not None else None
    if cert is None and key is None:
        if not insecure:
            raise ConfigError(
                f"{section}.tls.cert and {section}.tls.key are required; set "
                f"{section}.insecure = true (or --insecure) to serve plain text on a "
                "loopback host"
            )
        check_plaintext(host, setting=f"{section}.insecure")
        return None
    if cert is None or key is None or tls is None:
        raise ConfigError(f"{section}.tls.cert and {section}.tls.key must be set together")
    pair = [(_read(key, f"{section}.tls.key"), _read(cert, f"{section}.tls.cert"))]
    if tls.client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair,
        root_certificates=_read(tls.client_ca, f"{section}.tls.client_ca"),
        require_client_auth=True,
    )


class GrpcServer:
    """A grpc.aio server with health and reflection; made by :func:`create_server`.

    Register services with :meth:`add_service`, then :meth:`start` binds and serves.

    Attributes:
        server: the ``grpc.aio.Server``.
        host: the address it listens on.
        port: the port asked for; after :meth:`start`, the bound one (0 picks a free one).
        services: the full names of the registered services.
    """

    def __init__(
        self,
        server: aio.Server,
        credentials: grpc.ServerCredentials | None,
        host: str,
        port: int,
    ) -> None:
        self.server = server
        self._credentials = credentials
        self.host = host
        self.port = port
        self.services: tuple[str, ...] = ()
        self._health = health_aio.HealthServicer()

    def add_service(self, name: str, add: Callable[[aio.Server], object]) -> None:
        """Register a service before :meth:`start`.

        Args:
            name: its full name (``edgecloud.v1.SplitService``), for health and reflection.
            add: adds the servicer to the server (the generated ``add_..._to_server``).
        """
        add(self.server)
        self.services = (*self.services, name)

    async def start(self) -> None:
        """Bind, start serving; health reports ``SERVING`` overall and for every service.

        Raises:
            ConfigError: the address cannot be bound.
        """
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            (*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        host = self.host.strip("[]")
        address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        try:
            if self._credentials is not None:
                self.port = self.server.add_secure_port(address, self._credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from exc
        await self.server.start()
        for name in ("", *self.services):
            await self._health.set(name, _SERVING)

    async def set_serving(self, service: str, serving: bool) -> None:
        """Health status of one service (``""``: the server as a whole)."""
        await self._health.set(service, _SERVING if serving else _NOT_SERVING)

    async def drain(
        self, grace: float | None, *, draining: Callable[[], object] = lambda: None
    ) -> None:
        """Stop gracefully: health ``NOT_SERVING`` first (load balancers move away),
        then ``draining()`` (e.g. end endless streams), then refuse new calls and give
        in-flight ones ``grace`` seconds (None: as long as they take) before cancelling."""
        await self._health.enter_graceful_shutdown()
        draining()
        await self.server.stop(grace)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def create_server(
    *,
    host: str,
    port: int,
    tls: TlsConfig | None,
    insecure: bool,
    section: str,
    auth: AuthConfig | None = None,
    interceptors: Sequence[aio.ServerInterceptor] = (),
    max_message_bytes: int = 1 << 20,
    maximum_concurrent_rpcs: int | None = None,
) -> GrpcServer:
    """A grpc.aio server, its security checked (call inside the loop that will run it).

    Args:
        host, port: where to listen (port 0 picks a free one).
        tls, insecure, section: see :func:`server_credentials`.
        auth: bearer tokens; None or no tokens: no authentication.
        interceptors: more server interceptors, run after auth and before the decode guard.
        max_message_bytes: largest message received or sent.
        maximum_concurrent_rpcs: calls beyond it are refused (``RESOURCE_EXHAUSTED``).

    Returns:
        The server, not yet bound: :meth:`GrpcServer.add_service`, then
        :meth:`GrpcServer.start`.

    Raises:
        ConfigError: bad TLS settings, or plain text off loopback.

    Examples:
        >>> server = create_server(host="127.0.0.1", port=0, tls=None, insecure=True,
        ...                        section="split.serve")               # doctest: +SKIP
        >>> server.add_service(NAME, lambda s: add_FooServicer_to_server(servicer, s))
        >>> await server.start()
    """
    credentials = server_credentials(tls, host=host, insecure=insecure, section=section)
    chain: list[aio.ServerInterceptor] = []
    if auth is not None and auth.tokens:
        chain.append(TokenAuthInterceptor(auth.tokens))
    chain.append(RequestIdInterceptor())
    chain.extend(interceptors)
    chain.append(DecodeGuardInterceptor())
    server = aio.server(
        interceptors=chain,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    return GrpcServer(server, credentials, host, port)


@contextlib.asynccontextmanager
async def stop_signals() -> AsyncIterator[asyncio.Event]:
    """An event that SIGTERM or SIGINT sets while inside the block.

    The signals stay caught until the block ends, so a second one while the
    server drains does not cut the drain short.

    Examples:
        >>> async with stop_signals() as stop:                     # doctest: +SKIP
        ...     await stop.wait()
        ...     await server.drain(30)
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
