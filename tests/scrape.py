"""Reading Prometheus text: one sample's value, for before/after comparisons (the default
registry is process-wide, so tests compare deltas, never absolute values)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from edgecloud.common.metrics import scrape


class Snapshot:
    """The samples of one scrape: ``snap["edgecloud_tokens_total", {"side": "cloud", ...}]``
    is the sample with exactly those labels (0 when absent)."""

    def __init__(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode()
        self.samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def __getitem__(self, key: tuple[str, dict[str, str]]) -> float:
        name, labels = key
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def delta(self, before: Snapshot, name: str, **labels: str) -> float:
        return self[name, labels] - before[name, labels]


def device() -> Snapshot:
    """This process's default registry, as a device's ``/metrics`` serves it."""
    return Snapshot(scrape())


def http(url: str) -> Snapshot:
    """An HTTP scrape (the cloud's metrics port)."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        return Snapshot(reply.read())
