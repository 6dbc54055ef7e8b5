"""The neutral core that the device, the cloud, the transport and the facade share.

Nothing here imports from a package above it (device, cloud, split, transport,
adapters, router, the facade); ``make check`` enforces it with import contracts.

- :mod:`~edgecloud.common.records`: the escalation record and its one SQLite column list;
- :mod:`~edgecloud.common.text`: prompt checks, UTF-8 reassembly, stop sequences;
- :mod:`~edgecloud.common.chat`: the plain chat rendering and GGUF chat templates;
- :mod:`~edgecloud.common.encoder`: the small ONNX sentence encoder;
- :mod:`~edgecloud.common.onnx`: the one runner of ONNX graphs;
- :mod:`~edgecloud.common.models`: the embedded default model and model-file checks;
- :mod:`~edgecloud.common.files`: block hashing and durable renames;
- :mod:`~edgecloud.common.settings`: the base of every settings section;
- :mod:`~edgecloud.common.aio`: the bridge between threads and event loops;
- :mod:`~edgecloud.common.metrics`: the Prometheus metrics of both sides (no-ops without
  prometheus_client);
- :mod:`~edgecloud.common.logs`: JSON log lines and the request id both sides bind.

Modules load on demand: importing this package loads none of them.
"""

__all__: list[str] = []
