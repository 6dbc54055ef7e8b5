"""The cloud service: inference and adapter sync on one grpc.aio server.

The server comes from :func:`edgecloud.transport.create_server` (TLS, auth,
health, reflection, sizes); with ``cloud.metrics.enabled`` a Prometheus ``/metrics``
port serves beside it and stops with it. Plain text is refused unless ``cloud.insecure`` is
set *and* the host is a loopback address; otherwise TLS (mTLS with
``cloud.tls.client_ca``) is required. On SIGTERM or SIGINT the health status
turns ``NOT_SERVING``, new calls are refused, and in-flight streams get
``cloud.shutdown_grace_s`` to end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from edgecloud._proto.v1 import adapters_pb2_grpc as pb_adapters_grpc
from edgecloud._proto.v1 import inference_pb2 as pb
from edgecloud._proto.v1 import inference_pb2_grpc as pb_grpc
from edgecloud.cloud._backend import CloudBackend
from edgecloud.cloud._records import RecordStore
from edgecloud.cloud._service import InferenceServicer
from edgecloud.cloud._settings import CloudConfig, CloudSettings
from edgecloud.cloud._versions import adapters_dir, peft_dir
from edgecloud.common.settings import default_cache_dir
from edgecloud.errors import ConfigError, UnknownAdapterError
from edgecloud.transport._server import (
    GrpcServer,
    create_server,
    server_credentials,
    stop_signals,
)

if TYPE_CHECKING:
    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.cloud._adapter_service import AdapterSyncServicer
    from edgecloud.cloud._advertise import CloudAnnouncement
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.cloud._ray import RayBackend
    from edgecloud.cloud._torch import TorchBackend
    from edgecloud.cloud._upstream import UpstreamBackend
    from edgecloud.common.metrics import MetricsServer

__all__ = [
    "SERVICE_NAME",
    "CloudServer",
    "load_knowledge",
    "open_records",
    "records_path",
    "registry_url",
    "serve",
    "stable_peft_adapters",
]

log = logging.getLogger("edgecloud.cloud")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


def records_path(config: CloudConfig, cache_dir: Path | None = None) -> Path:
    """``cloud.records.path``, else ``<cache_dir>/cloud/escalations.sqlite3``."""
    if config.records.path is not None:
        return config.records.path.expanduser()
    return (cache_dir or default_cache_dir()) / "cloud" / "escalations.sqlite3"


def open_records(config: CloudConfig, cache_dir: Path | None = None) -> RecordStore:
    """The record store of ``cloud.records``: PostgreSQL at ``url`` when set, else SQLite.

    Raises:
        ConfigError: the PostgreSQL server cannot be reached, or psycopg is missing.
    """
    r = config.records
    if r.url is not None:
        from edgecloud.cloud._pgrecords import PgRecordStore

        return PgRecordStore(r.url, max_records=r.max_records, max_age_s=r.max_age_s)
    return RecordStore(records_path(config, cache_dir), max_records=r.max_records,
                       max_age_s=r.max_age_s)  # fmt: skip


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
        try:
            found[adapter_id] = peft_dir(registry, adapter_id, stable, adapters_dir(cache_dir))
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
        max_chars=cfg.chunk_chars,
        progress=progress,
    )
    log.warning(
        "knowledge: %d chunks from %s, index %s in %s",
        len(kb), cfg.directory, "rebuilt" if kb.rebuilt else "loaded (unchanged)", kb.index_dir,
    )  # fmt: skip
    return kb


@dataclass
class ServiceParts:
    """What a cloud service runs on, built from settings by :func:`build_service`."""

    backend: TorchBackend | UpstreamBackend | RayBackend
    config: CloudConfig
    knowledge: KnowledgeBase | None
    records: RecordStore
    registry: AdapterRegistry

    def close(self) -> None:
        """Free the model; the server closes the record store when it stops."""
        self.backend.close()


def build_service(
    settings: CloudSettings, knowledge_progress: Callable[[int, int], None] | None = None
) -> ServiceParts:
    """Check the TLS settings, load the knowledge base, open the record store and the
    adapter registry, and load the model with the stable version of every adapter line
    under the ids the devices use (adapters named in ``cloud.model.adapters`` win).

    The TLS settings are checked first, so a bad certificate fails before the slow load.

    Raises:
        ConfigError: bad TLS settings, a missing knowledge directory, a bad registry.
        CloudModelLoadError: the model or an adapter could not be loaded.
    """
    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.cloud._torch import TorchBackend

    cloud = settings.cloud
    server_credentials(cloud.tls, host=cloud.host, insecure=cloud.insecure, section="cloud")
    knowledge = load_knowledge(cloud, knowledge_progress)
    records = open_records(cloud, settings.cache_dir)
    registry = AdapterRegistry(registry_url(cloud, settings.cache_dir))
    if cloud.backend == "openai":
        from edgecloud.cloud._upstream import UpstreamBackend

        # The upstream serves its own LoRAs (cloud.upstream.adapters), or loads the
        # registry's stable versions at run time (cloud.upstream.load_adapters).
        try:
            upstream = UpstreamBackend.connect(
                cloud, registry=registry, cache_dir=settings.cache_dir
            )
        except BaseException:
            records.close()
            raise
        return ServiceParts(upstream, cloud, knowledge, records, registry)
    if cloud.backend == "ray":
        from edgecloud.cloud._ray import RayBackend

        # Replicas load the registry's adapter versions on demand (model multiplexing).
        try:
            ray_backend = RayBackend.start(
                cloud, settings.cache_dir, registry_url(cloud, settings.cache_dir)
            )
        except BaseException:
            records.close()
            raise
        return ServiceParts(ray_backend, cloud, knowledge, records, registry)
    adapters = {**stable_peft_adapters(registry, settings.cache_dir), **cloud.model.adapters}
    if adapters != cloud.model.adapters:
        model = cloud.model.model_copy(update={"adapters": adapters})
        cloud = cloud.model_copy(update={"model": model})
        settings = _WithCloud(cloud, settings.cache_dir)
    backend = TorchBackend.load(settings)
    return ServiceParts(backend, cloud, knowledge, records, registry)


@dataclass(frozen=True)
class _WithCloud:
    cloud: CloudConfig
    cache_dir: Path


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
        server: GrpcServer,
        backend: CloudBackend,
        grace: float,
        records: RecordStore,
        registry: AdapterRegistry | None = None,
        adapter_sync: AdapterSyncServicer | None = None,
        announcement: CloudAnnouncement | None = None,
    ) -> None:
        self._server = server
        self.backend = backend
        self.port = server.port
        self._grace = grace
        self.records = records
        self.registry = registry
        self._adapter_sync = adapter_sync
        self.metrics: MetricsServer | None = None
        """The metrics port (``cloud.metrics``), while it serves; None when off."""
        self.announcement = announcement
        """The LAN announcement (``cloud.discovery``), when the service makes one."""

    @classmethod
    async def start(
        cls,
        backend: CloudBackend,
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
            ConfigError: bad TLS settings, or the address (or the metrics port's) cannot
                be bound.
        """
        server = create_server(
            host=config.host,
            port=config.port if port is None else port,
            tls=config.tls,
            insecure=config.insecure,
            section="cloud",
            auth=config.auth,
            max_message_bytes=config.max_message_bytes,
            maximum_concurrent_rpcs=_max_rpcs(config),
        )
        if knowledge is None:
            knowledge = await asyncio.to_thread(load_knowledge, config)
        if records is None:
            records = open_records(config)
        from edgecloud.adapters._registry import AdapterRegistry
        from edgecloud.cloud import _adapter_service

        if registry is None:
            registry = AdapterRegistry(registry_url(config))
        inference = InferenceServicer(backend, config, knowledge=knowledge, records=records)
        server.add_service(
            SERVICE_NAME, partial(pb_grpc.add_InferenceServiceServicer_to_server, inference)
        )
        adapter_sync = _adapter_service.AdapterSyncServicer(
            registry, chunk_bytes=config.registry.chunk_bytes
        )
        server.add_service(
            _adapter_service.SERVICE_NAME,
            partial(pb_adapters_grpc.add_AdapterSyncServicer_to_server, adapter_sync),
        )
        await server.start()
        log.warning("edgecloud cloud service listening on %s:%d", config.host, server.port)
        try:
            metrics_server = _metrics_port(config)
        except BaseException:
            await server.drain(0)
            records.close()
            raise
        try:
            announcement = await _announce(server, config, backend, registry, records)
        except BaseException:
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.close)
            raise
        started = cls(server, backend, config.shutdown_grace_s, records, registry, adapter_sync,
                      announcement)  # fmt: skip
        started.metrics = metrics_server
        return started

    async def stop(self, grace: float | None = None) -> None:
        """Health ``NOT_SERVING``, end watch streams, refuse new calls, give in-flight
        streams ``grace`` seconds (default ``cloud.shutdown_grace_s``), then stop.

        The LAN announcement is withdrawn first, so devices move on while it drains."""
        if self.announcement is not None:
            await self.announcement.stop()
            self.announcement = None
        sync = self._adapter_sync
        try:
            await self._server.drain(
                self._grace if grace is None else grace,
                draining=sync.close if sync is not None else lambda: None,
            )
        finally:
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.close)
                self.metrics = None
        self.records.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


def _max_rpcs(config: CloudConfig) -> int:
    """Calls the server takes at once: twice the sequences the engine runs and queues
    (each replica's, with the Ray engine)."""
    replicas = config.ray.max_replicas if config.backend == "ray" else 1
    return (config.max_running_sequences + config.max_queued_requests) * 2 * replicas


def _metrics_port(config: CloudConfig) -> MetricsServer | None:
    """Start ``cloud.metrics`` when enabled (None when not).

    Raises:
        ConfigError: the address cannot be bound, or prometheus_client is missing.
    """
    cfg = config.metrics
    if not cfg.enabled:
        return None
    from edgecloud.common.metrics import serve_metrics

    try:
        found = serve_metrics(cfg.host, cfg.port)
    except ImportError as exc:
        raise ConfigError(
            "cloud.metrics.enabled needs prometheus-client (pip install 'edgecloud[metrics]')"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cloud.metrics: cannot listen on {cfg.host}:{cfg.port}: {exc}") from exc
    log.warning("edgecloud cloud metrics on %s", found.url)
    return found


async def _announce(
    server: GrpcServer,
    config: CloudConfig,
    backend: CloudBackend,
    registry: AdapterRegistry,
    records: RecordStore,
) -> CloudAnnouncement | None:
    """Announce the started service on the LAN when ``cloud.discovery`` says so.

    Raises:
        DiscoveryError: announcing was asked for explicitly and failed (the server is
            stopped); by default a failure is logged and the service runs unannounced.
    """
    from edgecloud.cloud._advertise import CloudAnnouncement, should_advertise
    from edgecloud.errors import DiscoveryError

    if not should_advertise(config):
        return None
    try:
        return await CloudAnnouncement.start(config, backend, registry, server.port)
    except DiscoveryError as exc:
        if config.discovery.advertise is None:
            log.warning("cloud.discovery: not announced on the LAN: %s", exc)
            return None
        await server.server.stop(0)
        records.close()
        raise


async def serve(
    backend: CloudBackend,
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
    async with stop_signals() as stop:
        await stop.wait()
        log.warning("stopping: draining in-flight streams for up to %.0fs", config.shutdown_grace_s)
        await server.stop()
