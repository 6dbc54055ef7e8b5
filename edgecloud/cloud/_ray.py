"""The torch engine as a Ray Serve deployment, behind the same gRPC service.

``cloud.backend = "ray"`` (``edgecloud cloud serve --engine ray``): this process keeps
the gRPC service (limits, auth, knowledge, records, adapter sync) and a
:class:`RayBackend`; generation runs in replicas of :class:`EngineReplica`, each a
:class:`~edgecloud.cloud.TorchBackend` with its own continuous-batching scheduler.
Ray Serve starts ``cloud.ray.replicas`` of them, adds replicas up to
``max_replicas`` when the ongoing streams per replica pass
``target_ongoing_requests``, and replaces a replica that dies.

Streams go through a deployment handle with ``stream=True``: each event a replica
yields (a :class:`Chunk`, :class:`Finish` or :class:`Retraction`) reaches the gRPC
stream as it is produced. Closing the stream cancels the replica's generator, which
frees the batch slot as in-process.

Adapters use Ray Serve model multiplexing. The front resolves a request's
``adapter_id`` to the registry's stable version and sends the request with
``multiplexed_model_id = "<adapter_id>@<version>"``; Ray routes it to a replica that
has that version loaded when one does, and a replica that has not loads it from the
registry on demand (the peft files, verified against the signed manifest), keeping
``max_adapters_per_replica`` versions. A version published (promoted) later gets a
new id, so every replica picks it up on its next request for that adapter, without a
restart; the old version is unloaded when it falls out of the replica's cache.

A replica that dies mid-stream (a crash, ``ray.kill``) fails only the streams it
was serving, with a retryable :class:`~edgecloud.errors.TransportError` (gRPC
``UNAVAILABLE``): a device treats it as a dead cloud (falls back, or retries on its
next request, which Ray routes to a live replica).

ray is imported only here and only when this backend is used (``pip install
'edgecloud[ray]'``). A local cluster (``cloud.ray.address`` unset) binds to
127.0.0.1, without dashboard or usage stats, and Serve's HTTP proxy is off: the gRPC
service is the only way in.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from edgecloud.cloud._backend import BackendInfo, CloudRequest, LoadSnapshot
from edgecloud.cloud._settings import CloudConfig, CloudRayConfig
from edgecloud.cloud._versions import (
    adapter_model_id,
    adapters_dir,
    parse_model_id,
    peft_dir,
    stable_adapters,
    stable_version,
)
from edgecloud.errors import (
    CloudError,
    ConfigError,
    EdgeCloudError,
    TransportError,
)
from edgecloud.types import Chunk, Finish, Retraction

__all__ = [
    "EngineReplica",
    "RayBackend",
    "adapter_model_id",
    "build_app",
    "connect_ray",
    "engine_application",
    "parse_model_id",
    "replica_actor_names",
    "run_on_ray",
]

log = logging.getLogger("edgecloud.cloud")

DEPLOYMENT = "CloudEngine"
_INFO_TTL_S = 2.0


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "cloud.backend 'ray' needs Ray Serve: pip install 'edgecloud[ray]'"
        ) from exc
    return ray


def connect_ray(cfg: CloudRayConfig) -> None:
    """Join ``cfg.address``, or start a local cluster on 127.0.0.1 (once per process).

    Raises:
        ConfigError: ray is not installed, or the cluster cannot be reached.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg.address is None:
        # ray.init turns a loopback node address into the machine's outward IP, and its
        # servers then listen there and on every interface, unless Ray thinks it runs
        # where clusters are off (its Windows/macOS mode): then everything binds to
        # 127.0.0.1. Set before Ray reads it, and for the processes Ray starts.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = _ray()
    if ray.is_initialized():
        return
    if cfg.address is None:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # ray was imported before the variable
    try:
        if cfg.address is None:
            ray.init(
                address="local",
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                num_cpus=cfg.num_cpus,
                log_to_driver=False,
                # Workers import edgecloud as this process does (a source checkout too).
                runtime_env={"env_vars": {"PYTHONPATH": _python_path()}},
            )
        else:
            ray.init(address=cfg.address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cloud.ray.address: cannot start or join Ray: {exc}") from exc
    if cfg.address is None and (ip := ray.util.get_node_ip_address()) != "127.0.0.1":
        ray.shutdown()
        raise ConfigError(f"the local Ray cluster would listen on {ip}, not 127.0.0.1; refused")


def _python_path() -> str:
    here = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (here, rest) if p)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What :meth:`TorchBackend.load` reads (a :class:`CloudSettings`), rebuilt in a replica."""

    cloud: CloudConfig
    cache_dir: Path


class _LoadedAdapter:
    """One adapter version loaded into a replica's model (a multiplexed "model").

    Ray Serve calls ``__del__`` when it evicts the version from the replica's cache; the
    adapter is then unloaded once no request uses it.
    """

    def __init__(self, name: str, unload: Callable[[str], None]) -> None:
        self.name = name
        self._unload: Callable[[str], None] | None = unload

    def __del__(self) -> None:
        unload, self._unload = self._unload, None
        if unload is not None:
            unload(self.name)


def _replica_grpc_on_loopback() -> None:
    """Make this replica's inter-deployment gRPC server listen on 127.0.0.1.

    Ray Serve 2.60 binds it to ``[::]:0`` (every interface) whatever the node address;
    in a local cluster the node address is 127.0.0.1, so peers reach it there. Runs in
    the replica's constructor, before Serve starts that server.
    """
    import importlib

    replica: Any = importlib.import_module("ray.serve._private.replica")
    bind = replica.add_port_to_grpc_server
    if getattr(bind, "edgecloud_loopback", False):
        return

    def on_loopback(server: Any, address: str) -> Any:
        host, _, port = address.rpartition(":")
        return bind(server, f"127.0.0.1:{port}" if host in ("[::]", "0.0.0.0") else address)

    on_loopback.edgecloud_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_loopback


class EngineReplica:
    """One Ray Serve replica: a :class:`TorchBackend` and the adapters it has loaded.

    Built by Ray from JSON settings (not by callers); see :class:`RayBackend`.
    """

    def __init__(self, config_json: str, cache_dir: str, registry_url: str) -> None:
        from ray import serve

        from edgecloud.adapters._registry import AdapterRegistry
        from edgecloud.cloud._torch import TorchBackend

        config = CloudConfig.model_validate_json(config_json)
        if config.ray.address is None:
            _replica_grpc_on_loopback()
        self._settings = _Settings(config, Path(cache_dir))
        self._registry = AdapterRegistry(registry_url)
        self.backend = TorchBackend.load(self._settings)
        self.replica_id: str = serve.get_replica_context().replica_id.unique_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unloading: set[asyncio.Task[None]] = set()

        async def load(model_id: str) -> _LoadedAdapter:
            return await self._load_adapter(model_id)

        self._adapter = serve.multiplexed(
            max_num_models_per_replica=config.ray.max_adapters_per_replica
        )(load)

    async def _load_adapter(self, model_id: str) -> _LoadedAdapter:
        adapter_id, version = parse_model_id(model_id)
        root = adapters_dir(self._settings.cache_dir)
        path = await asyncio.to_thread(peft_dir, self._registry, adapter_id, version, root)
        await self.backend.add_adapter(model_id, path)
        self._loop = asyncio.get_running_loop()
        log.warning("replica %s loaded adapter %s", self.replica_id, model_id)
        return _LoadedAdapter(model_id, self._unload)

    def _unload(self, name: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def start() -> None:
            task = loop.create_task(self.backend.remove_adapter(name))
            self._unloading.add(task)
            task.add_done_callback(self._unloading.discard)

        with contextlib.suppress(RuntimeError):  # the loop closed: the replica is gone
            loop.call_soon_threadsafe(start)

    def info(self) -> dict[str, Any]:
        """The model served, where, and this replica's id."""
        info = self.backend.info
        return {"model": info.model, "device": info.device, "dtype": info.dtype,
                "adapters": list(info.adapters), "replica": self.replica_id}  # fmt: skip

    def load(self) -> dict[str, int]:
        """This replica's batch and queue now (``LoadSnapshot`` fields)."""
        return dataclasses.asdict(self.backend.load_snapshot())

    def loaded_adapters(self) -> list[str]:
        """Adapter names loaded in this replica's model now (for tests and operators)."""
        return sorted(getattr(self.backend.engine.model, "peft_config", {}))

    async def generate(
        self, request: CloudRequest, timeout_s: float | None
    ) -> AsyncGenerator[Chunk | Finish | Retraction | dict[str, str], None]:
        """Stream ``request`` from this replica's engine.

        The first event is ``{"replica": id, "model": multiplexed model id}`` (once the
        adapter is loaded), then the engine's events; an error the engine raises on
        purpose comes as ``{"error": class name, "message": ...}`` (the front raises
        it again, so it keeps its gRPC status).
        """
        from ray import serve

        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        model_id = serve.get_multiplexed_model_id()
        try:
            adapter_id = request.adapter_id
            if model_id:
                adapter_id = (await self._adapter(model_id)).name
            yield {"replica": self.replica_id, "model": model_id}
            local = dataclasses.replace(request, adapter_id=adapter_id, deadline=deadline)
            stream = self.backend.generate(local)
            try:
                async for event in stream:
                    yield event
            finally:
                await stream.aclose()
        except EdgeCloudError as exc:
            yield {"error": type(exc).__name__, "message": str(exc)}

    def __del__(self) -> None:
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()


def _error(name: str, message: str) -> EdgeCloudError:
    """The error a replica reported, as its own class when edgecloud.errors has it."""
    from edgecloud import errors

    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, EdgeCloudError):
        try:
            return cls(message)
        except TypeError:  # a class with more arguments (none the engine raises)
            pass
    return CloudError(message)


def engine_application(config: CloudConfig, cache_dir: Path, registry_url: str) -> Any:
    """The Ray Serve application of the engine: :class:`EngineReplica` with the autoscaling,
    resources and adapter cache of ``config.ray``."""
    from ray import serve

    cfg = config.ray
    deployment = serve.deployment(
        name=DEPLOYMENT,
        autoscaling_config={
            "min_replicas": cfg.replicas,
            "initial_replicas": cfg.replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
        },
        # The replica's scheduler queues and refuses; Ray should not queue for it.
        max_ongoing_requests=config.max_running_sequences + config.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
    )(EngineReplica)
    return deployment.bind(config.model_dump_json(), str(cache_dir), registry_url)


def build_app(args: dict[str, str]) -> Any:
    """Ray Serve application builder, for a declarative Serve config (a KubeRay RayService's
    ``serveConfigV2``: ``import_path: edgecloud.cloud._ray:build_app``).

    ``args["config"]`` is the TOML settings file; its ``[cloud]`` table configures the
    engine (``EDGECLOUD_*`` variables are not read here). ``args["cache_dir"]`` is where
    the converted model and adapters are cached (default: the user cache). The front,
    ``edgecloud cloud serve`` with ``cloud.ray.deploy = false``, attaches to it by
    ``cloud.ray.app_name``.
    """
    import tomllib

    from edgecloud.common.settings import default_cache_dir

    with open(args["config"], "rb") as f:
        config = CloudConfig.model_validate(tomllib.load(f).get("cloud", {}))
    cache_dir = Path(args["cache_dir"]) if args.get("cache_dir") else default_cache_dir()
    registry = config.registry.url or str(cache_dir / "registry")
    return engine_application(config, cache_dir, registry)


def _running_app(serve: Any, name: str, wait_s: float = 600.0) -> Any:
    """The handle of Serve application ``name`` once it runs (deployed by someone else).

    Raises:
        ConfigError: it is not running after ``wait_s`` seconds.
    """
    until = time.monotonic() + wait_s
    while True:
        status = serve.status().applications.get(name)
        if status is not None and str(status.status).endswith("RUNNING"):
            return serve.get_app_handle(name)
        if time.monotonic() > until:
            raise ConfigError(f"cloud.ray.app_name: no running Ray Serve application {name!r}")
        time.sleep(2.0)


class RayBackend:
    """A :class:`~edgecloud.cloud.CloudBackend` that streams from the Ray Serve deployment.

    Build it with :meth:`start`. ``served`` counts the streams each replica took, by
    (Ray Serve replica id, multiplexed model id); ``in_flight`` maps the request id of
    each open stream to its replica.
    """

    def __init__(
        self,
        handle: Any,
        config: CloudConfig,
        registry: Any,
        base: dict[str, Any],
    ) -> None:
        self._handle = handle
        self._config = config
        self._registry = registry
        self._base = base
        self._adapters: tuple[str, ...] = ()
        self._adapters_at = float("-inf")
        self.served: collections.Counter[tuple[str, str]] = collections.Counter()
        self.in_flight: dict[str, str] = {}

    @classmethod
    def start(cls, config: CloudConfig, cache_dir: Path, registry_url: str) -> RayBackend:
        """Connect to Ray (or start it on 127.0.0.1), deploy the engine (or attach to it,
        ``cloud.ray.deploy = false``), wait for it. Call from the main thread, outside an
        event loop (Ray starts there, and its handles' blocking waits refuse a loop).

        Raises:
            ConfigError: ray is missing or the cluster cannot be reached.
            CloudModelLoadError: the replicas could not load the model.
        """
        from edgecloud.adapters._registry import AdapterRegistry

        cfg = config.ray
        connect_ray(cfg)
        from ray import serve

        try:
            if cfg.deploy:
                serve.start(proxy_location="Disabled", http_options={"host": "127.0.0.1"})
                app = engine_application(config, cache_dir, registry_url)
                handle = serve.run(app, name=cfg.app_name, route_prefix=None)
            else:
                handle = _running_app(serve, cfg.app_name)
            base = handle.info.remote().result()
        except Exception as exc:  # Ray's deployment errors carry the replica's traceback
            from edgecloud.errors import CloudModelLoadError

            raise CloudModelLoadError(f"the Ray Serve engine did not start: {exc}") from exc
        log.warning("Ray Serve engine %r: %d..%d replicas of %s", cfg.app_name, cfg.replicas,
                    cfg.max_replicas, base["model"])  # fmt: skip
        return cls(handle, config, AdapterRegistry(registry_url), base)

    @property
    def info(self) -> BackendInfo:
        """The model, and the adapters the registry has a stable version of."""
        now = time.monotonic()
        if now - self._adapters_at > _INFO_TTL_S:
            self._adapters_at = now
            found = stable_adapters(self._registry)
            self._adapters = tuple(sorted({*found, *self._config.model.adapters}))
        return BackendInfo("ray", self._base["model"], self._adapters, self._base["device"],
                           self._base["dtype"])  # fmt: skip

    def load_snapshot(self) -> LoadSnapshot:
        """Streams open through this front now; the limits of the replicas at most."""
        cfg = self._config
        n = cfg.ray.max_replicas
        return LoadSnapshot(len(self.in_flight), 0, cfg.max_running_sequences * n,
                            cfg.max_queued_requests * n)  # fmt: skip

    async def model_id(self, adapter_id: str | None) -> str:
        """The multiplexed model id for ``adapter_id`` ('' for the base model and for
        adapters every replica loads at start, ``cloud.model.adapters``).

        Raises:
            UnknownAdapterError: the registry has no stable version of it.
        """
        if not adapter_id or adapter_id in self._config.model.adapters:
            return ""
        version = await asyncio.to_thread(stable_version, self._registry, adapter_id)
        return adapter_model_id(adapter_id, version)

    async def generate(
        self, request: CloudRequest
    ) -> AsyncGenerator[Chunk | Finish | Retraction, None]:
        """Stream from a replica (see :meth:`CloudBackend.generate`).

        Raises:
            TransportError: the replica died or could not be reached (retryable).
            UnknownAdapterError, InvalidRequestError, OverloadedError, CloudError: as
                the replica's engine raised them.
        """
        from ray.exceptions import RayActorError, RayError, RayTaskError

        model_id = await self.model_id(request.adapter_id)
        timeout = request.deadline - time.monotonic() if request.deadline is not None else None
        options: dict[str, Any] = {"stream": True}
        if model_id:
            options["multiplexed_model_id"] = model_id
        stream = self._handle.options(**options).generate.remote(
            dataclasses.replace(request, deadline=None), timeout
        )
        key = request.request_id
        self.in_flight[key] = ""
        try:
            async for event in stream:
                if isinstance(event, dict):
                    if "error" in event:
                        raise _error(event["error"], event.get("message", ""))
                    self.in_flight[key] = replica = event.get("replica", "")
                    self.served[replica, event.get("model", "")] += 1
                    continue
                yield event
                if isinstance(event, Finish):
                    return  # the answer is whole, whatever happens to the replica now
        except RayError as exc:
            if isinstance(exc, RayTaskError) and not isinstance(exc.cause, RayActorError):
                # A bug in the replica, not its death: retrying would not help.
                raise CloudError("the engine replica failed") from exc
            log.warning("Ray Serve stream failed: %s", exc)
            raise TransportError("the engine replica serving this stream was lost") from exc
        finally:
            self.in_flight.pop(key, None)
            stream.cancel()

    def close(self) -> None:
        """Stop the engine: the local cluster this process started goes with it; on a
        cluster joined by ``cloud.ray.address`` the Serve application is deleted (without
        waiting for its replicas to drain); one this process attached to stays."""
        ray = _ray()
        if not self._config.ray.deploy:
            return  # the application is someone else's (a RayService)
        if self._config.ray.address is None:
            ray.shutdown()
            return
        from ray import serve

        with contextlib.suppress(Exception):  # Ray already gone: nothing to delete
            serve.delete(self._config.ray.app_name, _blocking=False)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def replica_actor_names(app_name: str) -> list[str]:
    """The Ray actor names of the engine's replicas (namespace ``serve``)."""
    ray = _ray()
    prefix = f"SERVE_REPLICA::{app_name}#{DEPLOYMENT}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(prefix))  # fmt: skip


def run_on_ray(fn: Callable[..., Any], *args: Any, num_cpus: float, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` as a Ray task reserving ``num_cpus`` and return its result.

    Ray places it only where that many CPUs are free and keeps them for it (and sets
    the task's OMP threads to match), so a training round never takes the cores the
    serving replicas reserved. Call :func:`connect_ray` first.

    Raises:
        EdgeCloudError: what ``fn`` raised, when it is one.
        CloudError: ``fn`` failed otherwise.
    """
    ray = _ray()
    from ray.exceptions import RayTaskError

    task = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    try:
        return ray.get(task.remote(*args, **kwargs))
    except RayTaskError as exc:
        # The task's own error (too few records, a bad registry) as if run here.
        if isinstance(exc.cause, EdgeCloudError):
            raise exc.cause from None
        raise CloudError(f"the Ray task failed: {exc.cause!r}") from exc
