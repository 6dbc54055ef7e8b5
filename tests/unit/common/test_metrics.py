"""The metrics module: one definition in the default registry, no-ops without
prometheus_client, the token clock, and the metrics port's lifecycle."""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request

import pytest

from edgecloud.common import metrics as metrics_module
from edgecloud.common.metrics import TokenClock, metrics, serve_metrics
from tests import scrape


def test_without_prometheus_client_every_metric_is_a_silent_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    m = metrics_module._create()
    assert not m.enabled
    m.requests.labels("device", "local", "stop").inc()
    m.tokens.labels("cloud", "cloud").inc(5)
    m.time_to_first_token.labels("device").observe(0.1)
    m.upload_backlog.set(3)
    m.adapter_version.labels("a").set(2)
    assert metrics_module.scrape() == b""
    with pytest.raises(ImportError):
        serve_metrics("127.0.0.1", 0)


def test_every_metric_is_registered_once_in_the_default_registry() -> None:
    from prometheus_client import REGISTRY

    assert metrics() is metrics() and metrics().enabled
    kinds = {"counter": "counter", "gauge": "gauge"}
    found = [(f.name, f.type) for f in REGISTRY.collect() if f.name.startswith("edgecloud_")]
    expected = [(f"edgecloud_{name}", kinds.get(kind, "histogram"))
                for _field, kind, name, _doc, _labels in metrics_module._SPECS]  # fmt: skip
    assert set(expected) <= set(found)  # other parts of edgecloud may add their own


def test_the_token_clock_times_the_first_token_then_the_gaps() -> None:
    before = scrape.device()
    clock = TokenClock("cloud")
    time.sleep(0.02)
    for _ in range(4):
        clock.tick()
    after = scrape.device()
    ttft = after.delta(before, "edgecloud_time_to_first_token_seconds_sum", side="cloud")
    assert after.delta(before, "edgecloud_time_to_first_token_seconds_count", side="cloud") == 1
    assert after.delta(before, "edgecloud_inter_token_seconds_count", side="cloud") == 3
    assert 0.02 <= ttft < 5
    assert after.delta(before, "edgecloud_inter_token_seconds_sum", side="cloud") < ttft


def test_the_metrics_port_serves_then_frees_its_port() -> None:
    server = serve_metrics("127.0.0.1", 0)
    try:
        metrics().records_stored.inc(0)
        with urllib.request.urlopen(server.url, timeout=5) as reply:
            body = reply.read().decode()
        assert reply.status == 200 and "edgecloud_cloud_records_stored_total" in body
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)
    with socket.socket() as s:  # nothing left listening: the port can be listened on again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
        s.listen()


def test_first_calls_from_many_threads_at_once_register_the_metrics_once() -> None:
    """Under load an HTTP server's worker threads make their first metrics() call together;
    registering twice raised DuplicateTimeseries (an HTTP 500) before the lock."""
    import subprocess

    code = (
        "import threading\n"
        "from edgecloud.common.metrics import metrics\n"
        "gate, found, errors = threading.Barrier(16), [], []\n"
        "def first():\n"
        "    gate.wait()\n"
        "    try:\n"
        "        found.append(metrics())\n"
        "    except Exception as exc:\n"
        "        errors.append(exc)\n"
        "threads = [threading.Thread(target=first) for _ in range(16)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "assert not errors and len({id(m) for m in found}) == 1, errors\n"
    )
    for _ in range(5):  # the race needs the threads to meet inside the registration
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
