"""Prometheus metrics of the device and the cloud, defined once, in the default registry.

Every metric is named ``edgecloud_...``; those both sides keep are labelled
``side="device"|"cloud"``, those of one side say so in their name
(``edgecloud_device_...``, ``edgecloud_cloud_...``). Labels take values from small
fixed sets (a policy's name, never its free-text reason), so the number of series
stays bounded. The table is in ``docs/observability.md``.

``prometheus_client`` (the ``metrics`` extra) is imported on the first call of
:func:`metrics`, not with ``edgecloud``; without it every metric is a no-op, so the
instrumented code never checks. Scrape with :func:`scrape` (the text exposition of
the default registry, what a ``/metrics`` endpoint serves) or :func:`serve_metrics`
(the cloud's metrics port).

Cost: a request's counters move once, when it ends; per token the code pays one
``perf_counter`` difference and one histogram observation (:class:`TokenClock`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "FINISHES",
    "Metrics",
    "MetricsServer",
    "TokenClock",
    "metrics",
    "scrape",
    "serve_metrics",
]

log = logging.getLogger("edgecloud.metrics")

FINISHES = frozenset({"stop", "length", "cancelled", "error"})
"""Values of the ``finish`` label: a finish reason, or ``error`` (the request raised)."""

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Counter(Protocol):
    def labels(self, *values: str) -> Counter: ...
    def inc(self, amount: float = 1) -> None: ...


class Gauge(Protocol):
    def labels(self, *values: str) -> Gauge: ...
    def set(self, value: float) -> None: ...


class Histogram(Protocol):
    def labels(self, *values: str) -> Histogram: ...
    def observe(self, amount: float) -> None: ...


class _NoOp:
    """Stands for every metric when prometheus_client is not installed."""

    def labels(self, *values: str) -> _NoOp:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


@dataclass(frozen=True)
class Metrics:
    """Every edgecloud metric; label values are given positionally, in the order listed."""

    enabled: bool
    """False: prometheus_client is missing and every metric is a no-op."""
    requests: Counter
    """``edgecloud_requests_total{side, route, finish}``."""
    tokens: Counter
    """``edgecloud_tokens_total{side, source}``."""
    time_to_first_token: Histogram
    """``edgecloud_time_to_first_token_seconds{side}``."""
    inter_token: Histogram
    """``edgecloud_inter_token_seconds{side}``."""
    escalations: Counter
    """``edgecloud_device_escalations_total{policy}``."""
    handoffs: Counter
    """``edgecloud_device_handoffs_total``."""
    fallbacks: Counter
    """``edgecloud_device_fallbacks_total``."""
    shadow_requests: Counter
    """``edgecloud_device_shadow_requests_total{outcome,version}``."""
    adapter_version: Gauge
    """``edgecloud_device_adapter_version{adapter}``."""
    adapter_swaps: Counter
    """``edgecloud_device_adapter_swaps_total{adapter}``."""
    adapter_rollbacks: Counter
    """``edgecloud_device_adapter_rollbacks_total{adapter}``."""
    upload_backlog: Gauge
    """``edgecloud_device_upload_backlog``."""
    records_uploaded: Counter
    """``edgecloud_device_records_uploaded_total``."""
    queue_depth: Gauge
    """``edgecloud_cloud_queue_depth``."""
    running_sequences: Gauge
    """``edgecloud_cloud_running_sequences``."""
    batch_size: Histogram
    """``edgecloud_cloud_batch_size{phase}``."""
    errors: Counter
    """``edgecloud_cloud_errors_total{rpc, code}``."""
    records_stored: Counter
    """``edgecloud_cloud_records_stored_total``."""


_SPECS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    # (field, kind, name after "edgecloud_", help, labels)
    ("requests", "counter", "requests", "Requests answered, by where the answer came from "
     "(device: local, cloud, mixed; cloud: answer, continue, verify) and how they ended.",
     ("side", "route", "finish")),
    ("tokens", "counter", "tokens", "Tokens streamed, by the side that generated them.",
     ("side", "source")),
    ("time_to_first_token", "ttft", "time_to_first_token_seconds",
     "From the request to its first token.", ("side",)),
    ("inter_token", "itl", "inter_token_seconds", "Between two tokens of one answer.",
     ("side",)),
    ("escalations", "counter", "device_escalations",
     "Requests escalated to the cloud, by the policy that decided.", ("policy",)),
    ("handoffs", "counter", "device_handoffs", "Answers handed to the cloud mid-way.", ()),
    ("fallbacks", "counter", "device_fallbacks", "Answers the device gave or finished because "
     "the cloud failed or was out of reach.", ()),
    ("shadow_requests", "counter", "device_shadow_requests",
     "Shadow checks of confident local answers: agree, disagree, failed, by the adapter "
     "version that answered (base: the base model); disagree over agree plus disagree is "
     "the version's confidently-wrong rate on real traffic.", ("outcome", "version")),
    ("adapter_version", "gauge", "device_adapter_version",
     "The adapter version running (0: the base model).", ("adapter",)),
    ("adapter_swaps", "counter", "device_adapter_swaps",
     "Adapter hot-swaps, rollbacks included.", ("adapter",)),
    ("adapter_rollbacks", "counter", "device_adapter_rollbacks",
     "Adapter versions rolled back after a failed canary.", ("adapter",)),
    ("upload_backlog", "gauge", "device_upload_backlog",
     "Escalation records waiting for upload.", ()),
    ("records_uploaded", "counter", "device_records_uploaded",
     "Escalation records the cloud acknowledged.", ()),
    ("queue_depth", "gauge", "cloud_queue_depth", "Requests waiting for a batch slot.", ()),
    ("running_sequences", "gauge", "cloud_running_sequences",
     "Sequences in the running batch.", ()),
    ("batch_size", "batch", "cloud_batch_size", "Sequences per forward pass.", ("phase",)),
    ("errors", "counter", "cloud_errors", "Calls that ended with an error, by gRPC status.",
     ("rpc", "code")),
    ("records_stored", "counter", "cloud_records_stored",
     "Uploaded escalation records acknowledged as stored.", ()),
)  # fmt: skip
"""Every metric: one line each, the table ``docs/observability.md`` shows."""


def _create() -> Metrics:
    """Register every metric in the default registry (no-ops without prometheus_client)."""
    try:
        import prometheus_client as prom
    except ImportError:
        noop = _NoOp()
        return Metrics(False, **{spec[0]: noop for spec in _SPECS})
    buckets = {"ttft": TTFT_BUCKETS, "itl": INTER_TOKEN_BUCKETS, "batch": BATCH_BUCKETS}
    made: dict[str, Any] = {}
    for field, kind, name, doc, labels in _SPECS:
        full = f"edgecloud_{name}"
        if kind == "counter":
            made[field] = prom.Counter(full, doc, labels)
        elif kind == "gauge":
            made[field] = prom.Gauge(full, doc, labels)
        else:
            made[field] = prom.Histogram(full, doc, labels, buckets=buckets[kind])
    return Metrics(True, **made)


_created: list[Metrics] = []
_creating = threading.Lock()


def metrics() -> Metrics:
    """The process's metrics (created on the first call).

    Thread-safe: the first calls can come at once from several threads (an HTTP server's
    worker threads under load), and registering the metrics twice would fail."""
    if not _created:
        with _creating:
            if not _created:
                _created.append(_create())
    return _created[0]


def scrape() -> bytes:
    """The default registry in the Prometheus text format (empty without prometheus_client)."""
    try:
        from prometheus_client import generate_latest
    except ImportError:
        return b""
    metrics()
    return generate_latest()


class TokenClock:
    """Times one answer's tokens: the first from the request's start, then each from the
    one before (a ``perf_counter`` difference and one observation per token)."""

    __slots__ = ("_first", "_inter", "_last", "_start")

    def __init__(self, side: str) -> None:
        m = metrics()
        self._first = m.time_to_first_token.labels(side)
        self._inter = m.inter_token.labels(side)
        self._start = time.perf_counter()
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._first.observe(now - self._start)
        else:
            self._inter.observe(now - self._last)
        self._last = now


@dataclass
class MetricsServer:
    """The HTTP server of :func:`serve_metrics`; :meth:`close` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and wait for the thread; the port is free afterwards."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(host: str, port: int) -> MetricsServer:
    """Serve the default registry at ``http://host:port/metrics`` from a daemon thread.

    Args:
        host: address to listen on.
        port: 0 picks a free one (see :attr:`MetricsServer.port`).

    Raises:
        ImportError: prometheus_client is not installed.
        OSError: the address cannot be bound.
    """
    from prometheus_client import start_http_server

    metrics()
    server, thread = start_http_server(port, addr=host)
    return MetricsServer(host, int(server.server_port), server, thread)
