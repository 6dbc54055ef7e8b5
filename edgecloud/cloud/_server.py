"""The grpc.aio server: inference service, health, reflection, TLS, auth, graceful stop.

Plain text is refused unless ``cloud.insecure`` is set *and* the host is a
loopback address; otherwise TLS (mTLS with ``cloud.tls.client_ca``) is
required. On SIGTERM or SIGINT the health status turns ``NOT_SERVING``, new
calls are refused, and in-flight streams get ``cloud.shutdown_grace_s`` to end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from edgecloud._proto.v1 import adapters_pb2_grpc as pb_adapters_grpc
from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud._proto.v1 import inference_pb2_grpc as pb_grpc
from edgecloud.cloud._records import RecordStore
from edgecloud.cloud._service import InferenceServicer
from edgecloud.cloud._settings import CloudConfig
from edgecloud.cloud._torch import TorchBackend
from edgecloud.common.settings import default_cache_dir
from edgecloud.errors import ConfigError, UnknownAdapterError
from edgecloud.transport._auth import TokenAuthInterceptor
from edgecloud.transport._guard import DecodeGuardInterceptor

if TYPE_CHECKING:
    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.cloud._adapter_service import AdapterSyncServicer
    from edgecloud.cloud._knowledge import KnowledgeBase

__all__ = [
    "SERVICE_NAME",
    "CloudServer",
    "load_knowledge",
    "records_path",
    "registry_url",
    "serve",
    "stable_peft_adapters",
]

log = logging.getLogger("edgecloud.cloud")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read(path: Path, what: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cloud.tls.{what}: cannot read {path}: {exc.strerror}") from exc


def records_path(config: CloudConfig, cache_dir: Path | None = None) -> Path:
    """``cloud.records.path``, else ``<cache_dir>/cloud/escalations.sqlite3``."""
    if config.records.path is not None:
        return config.records.path.expanduser()
    return (cache_dir or default_cache_dir()) / "cloud" / "escalations.sqlite3"


def stable_peft_adapters(registry: AdapterRegistry, cache_dir: Path) -> dict[str, Path]:
    """adapter id -> local peft directory of its stable version, for every adapter line in
    the registry that has one with peft files (copied once into the cache, verified).

    The cloud then serves ``adapter_id`` requests with the same LoRA its devices run.

    Raises:
        AdapterIntegrityError: a stored file does not match its manifest.
    """
    found: dict[str, Path] = {}
    for adapter_id in registry.adapters():
        stable = registry.rollout_state(adapter_id).stable
        if stable is None:
            continue
        dest = cache_dir / "cloud" / "adapters" / adapter_id / str(stable)
        try:
            found[adapter_id] = registry.materialize(adapter_id, stable, "peft/", dest)
        except UnknownAdapterError:
            log.info("adapter %s v%d has no peft files; the cloud serves it without", adapter_id,
                     stable)  # fmt: skip
    return found


def registry_url(config: CloudConfig, cache_dir: Path | None = None) -> str:
    """``cloud.registry.url``, else the directory ``<cache_dir>/registry``."""
    if config.registry.url is not None:
        return config.registry.url
    return str((cache_dir or default_cache_dir()) / "registry")


def load_knowledge(
    config: CloudConfig, progress: Callable[[int, int], None] | None = None
) -> KnowledgeBase | None:
    """The knowledge base of ``cloud.knowledge`` (index built or loaded), or None when unset.

    Raises:
        ConfigError: the directory is missing or holds no documents.
        ModelNotFoundError: the sentence encoder is not installed.
    """
    cfg = config.knowledge
    if cfg.directory is None or not cfg.enabled:
        return None
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.common.encoder import SentenceEncoder

    kb = KnowledgeBase(
        cfg.directory.expanduser(),
        SentenceEncoder(),
        index_dir=cfg.index_dir.expanduser() if cfg.index_dir is not None else None,
        progress=progress,
    )
    log.warning(
        "knowledge: %d chunks from %s, index %s in %s",
        len(kb), cfg.directory, "rebuilt" if kb.rebuilt else "loaded (unchanged)", kb.index_dir,
    )  # fmt: skip
    return kb


def server_credentials(config: CloudConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from config, or None for plain text (loopback only).

    Raises:
        ConfigError: TLS is half-configured, or plain text was asked for off loopback.
    """
    tls = config.tls
    if tls.cert is None and tls.key is None:
        if not config.insecure:
            raise ConfigError(
                "cloud.tls.cert and cloud.tls.key are required; set cloud.insecure = true "
                "(or --insecure) to serve plain text on a loopback host"
            )
        if not _is_loopback(config.host):
            raise ConfigError(
                f"cloud.insecure serves plain text and is allowed only on loopback, "
                f"not on host {config.host!r}"
            )
        return None
    if tls.cert is None or tls.key is None:
        raise ConfigError("cloud.tls.cert and cloud.tls.key must be set together")
    pair = [(_read(tls.key, "key"), _read(tls.cert, "cert"))]
    if tls.client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair, root_certificates=_read(tls.client_ca, "client_ca"), require_client_auth=True
    )


class CloudServer:
    """A running inference service; build with :meth:`start`.

    Examples:
        >>> async def main() -> None:                            # doctest: +SKIP
        ...     backend = TorchBackend.load(settings)
        ...     server = await CloudServer.start(backend, settings.cloud)
        ...     print("listening on", server.port)
        ...     await server.wait_for_termination()
    """

    def __init__(
        self,
        server: aio.Server,
        backend: TorchBackend,
        health: health_aio.HealthServicer,
        port: int,
        grace: float,
        records: RecordStore,
        registry: AdapterRegistry | None = None,
        adapter_sync: AdapterSyncServicer | None = None,
    ) -> None:
        self._server = server
        self.backend = backend
        self._health = health
        self.port = port
        self._grace = grace
        self.records = records
        self.registry = registry
        self._adapter_sync = adapter_sync

    @classmethod
    async def start(
        cls,
        backend: TorchBackend,
        config: CloudConfig,
        *,
        port: int | None = None,
        knowledge: KnowledgeBase | None = None,
        records: RecordStore | None = None,
        registry: AdapterRegistry | None = None,
    ) -> CloudServer:
        """Bind ``config.host`` (port from ``port`` or config; 0 picks one) and start serving.

        Args:
            knowledge: retrieval put into prompts; None loads ``cloud.knowledge`` (if set).
            records: where uploaded escalation records go; None opens :func:`records_path`.
            registry: adapter versions served to devices (``edgecloud.v1.AdapterSync``);
                None opens :func:`registry_url`.

        Raises:
            ConfigError: bad TLS settings, or the address cannot be bound.
        """
        credentials = server_credentials(config)
        if knowledge is None:
            knowledge = await asyncio.to_thread(load_knowledge, config)
        if records is None:
            records = RecordStore(records_path(config))
        from edgecloud.adapters._registry import AdapterRegistry
        from edgecloud.cloud import _adapter_service

        if registry is None:
            registry = AdapterRegistry(registry_url(config))
        # Auth first: an unauthenticated caller learns nothing, not even that its bytes parse.
        interceptors: list[aio.ServerInterceptor] = []
        if config.auth.tokens:
            interceptors.append(TokenAuthInterceptor(config.auth.tokens))
        interceptors.append(DecodeGuardInterceptor())
        size = config.max_message_bytes
        server = aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=(config.max_running_sequences + config.max_queued_requests) * 2,
        )
        pb_grpc.add_InferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            InferenceServicer(backend, config, knowledge=knowledge, records=records), server
        )
        adapter_sync = _adapter_service.AdapterSyncServicer(
            registry, chunk_bytes=config.registry.chunk_bytes
        )
        pb_adapters_grpc.add_AdapterSyncServicer_to_server(  # type: ignore[no-untyped-call]
            adapter_sync, server
        )
        health_servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                _adapter_service.SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        host = config.host
        address = (
            f"[{host}]:{port if port is not None else config.port}"
            if ":" in host
            else (f"{host}:{port if port is not None else config.port}")
        )
        try:
            bound = (
                server.add_secure_port(address, credentials)
                if credentials is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from exc
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.warning("edgecloud cloud service listening on %s:%d", host, bound)
        return cls(
            server, backend, health_servicer, bound, config.shutdown_grace_s, records,
            registry, adapter_sync,
        )  # fmt: skip

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, give in-flight streams ``grace`` seconds, then stop."""
        await self._health.enter_graceful_shutdown()
        if self._adapter_sync is not None:
            self._adapter_sync.close()
        await self._server.stop(self._grace if grace is None else grace)
        self.records.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def serve(
    backend: TorchBackend,
    config: CloudConfig,
    *,
    port: int | None = None,
    knowledge: KnowledgeBase | None = None,
    records: RecordStore | None = None,
    registry: AdapterRegistry | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight streams and return."""
    server = await CloudServer.start(
        backend, config, port=port, knowledge=knowledge, records=records, registry=registry
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.warning("stopping: draining in-flight streams for up to %.0fs", config.shutdown_grace_s)
        await server.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
