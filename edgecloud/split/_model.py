"""``SplitModel``: run an ONNX model partly here, partly in the cloud, at the best cut."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgecloud.common.lifecycle import Closing
from edgecloud.errors import AuthError, EdgeCloudError, InvalidCutError, TransportError
from edgecloud.split._client import SplitClient
from edgecloud.split._codec import Compression, Encoding, encode
from edgecloud.split._cost import (
    CutCost,
    CutProfile,
    LinkEstimator,
    PowerModel,
    choose_cut,
)
from edgecloud.split._partition import Cut, Partitioner

__all__ = ["RunInfo", "SplitModel"]


@dataclass(frozen=True)
class RunInfo:
    """What the last :meth:`SplitModel.run` did."""

    cut: Cut
    predicted_s: float
    latency_s: float
    head_s: float
    fallback: bool
    """True when the cloud failed and the whole model ran here instead."""


class SplitModel(Closing):
    """An ONNX model whose head runs on this device and whose tail runs in the cloud.

    The cut is chosen per call from the profile (device head times, cloud tail
    times, bytes per cut) and the live link estimate, which every remote call
    updates. All-device and all-cloud are candidates. When the cloud fails, the
    call runs entirely here and the cloud is left out for ``cloud_retry_s``.

    Args:
        model: the ``.onnx`` file (the cloud must serve the same file as ``name``).
        cloud: a :class:`SplitClient`, an address, or None for device only.
        name: the model's name on the cloud (default: the file stem).
        objective: ``"latency"`` or ``"energy"`` (device energy under ``power``).
        encoding, compression: how activations cross the wire.
        device_slowdown: emulate a device this many times slower than this host.
        power: device power model for the energy objective.
        link_alpha: weight of the newest link sample in the moving estimate.
        threads: onnxruntime intra-op threads on the device (0: decide).
        cloud_retry_s: after a cloud failure, stay all-local this long.
        probe_interval_s: while the chosen cut sends nothing (all-local), probe
            the link this often so that a faster link is noticed.

    Examples:
        >>> model = SplitModel("digits_cnn.onnx", cloud="127.0.0.1:50061")  # doctest: +SKIP
        >>> model.profile()
        >>> outputs = model.run({"input": frame})
        >>> model.last.cut.name, model.last.latency_s
    """

    def __init__(
        self,
        model: str | Path,
        cloud: SplitClient | str | None = None,
        *,
        name: str | None = None,
        objective: Literal["latency", "energy"] = "latency",
        encoding: Encoding = "float16",
        compression: Compression = "none",
        device_slowdown: float = 1.0,
        power: PowerModel | None = None,
        link_alpha: float = 0.3,
        threads: int = 1,
        cloud_retry_s: float = 5.0,
        probe_interval_s: float = 5.0,
    ) -> None:
        from edgecloud.common.onnx import OnnxRunner

        if device_slowdown < 1.0:
            raise ValueError("device_slowdown must be >= 1")
        self.partitioner = Partitioner(model)
        self.path = Path(model)
        self.name = name or self.path.stem
        self.cloud = SplitClient(cloud) if isinstance(cloud, str) else cloud
        self.objective = objective
        self.encoding = encoding
        self.compression = compression
        self.device_slowdown = device_slowdown
        self.power = power or PowerModel()
        self.link = LinkEstimator(alpha=link_alpha)
        self._threads = threads
        self._retry_s = cloud_retry_s
        self._cloud_down_until = 0.0
        self._probe_interval = probe_interval_s
        self._last_probe = 0.0
        self._whole = OnnxRunner(
            self.path, providers=["CPUExecutionProvider"], intra_op_threads=threads
        )
        self._heads: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="edgecloud-split-heads-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self.profiles: list[CutProfile] = []
        self.last: RunInfo | None = None

    @property
    def cuts(self) -> list[Cut]:
        return self.partitioner.cuts()

    def _head(self, cut: Cut) -> Any:
        from edgecloud.common.onnx import OnnxRunner

        with self._lock:
            b = self._heads.get(cut.tensors)
            if b is None:
                proto = self.partitioner.head(cut)
                if proto is None:
                    return None
                path = Path(self._dir) / f"head-{len(self._heads)}.onnx"
                path.write_bytes(proto.SerializeToString())
                b = OnnxRunner(
                    path, providers=["CPUExecutionProvider"], intra_op_threads=self._threads
                )
                self._heads[cut.tensors] = b
            return b

    def run_head(self, cut: Cut, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
        """Run the device part of ``cut`` (with the emulated slowdown); returns the cut tensors."""
        if set(cut.tensors) == set(self.partitioner.outputs):
            backend = self._whole
        else:
            backend = self._head(cut)
        if backend is None:
            return {n: np.asarray(inputs[n]) for n in cut.tensors}
        t0 = time.perf_counter()
        out = backend.run(inputs)
        if self.device_slowdown > 1.0:
            time.sleep((time.perf_counter() - t0) * (self.device_slowdown - 1.0))
        return dict(out)

    def probe_link(self, probe_bytes: int = 64 * 1024, max_probe_bytes: int = 4 << 20) -> None:
        """Measure RTT (empty pings) and bandwidth (uploads) into the estimate.

        The upload grows 4x at a time (up to ``max_probe_bytes``) until its
        serialization dominates the round trip, so a fast link is measured too.

        Raises:
            TransportError: the cloud is unreachable.
        """
        if self.cloud is None:
            return
        self._last_probe = time.monotonic()
        self.cloud.ping()  # the first call also connects the channel: not a sample
        for _ in range(3):
            self.link.observe_rtt(self.cloud.ping())
        size = probe_bytes
        while True:
            seconds = self.cloud.ping(payload_bytes=size)
            if self.link.informative(seconds) or size >= max_probe_bytes:
                self.link.observe_transfer(size, seconds)
                break
            size = min(size * 4, max_probe_bytes)

    def profile(
        self, sample: Mapping[str, np.ndarray[Any, Any]] | None = None, *, repeats: int = 5
    ) -> list[CutProfile]:
        """Measure every cut: device head time, cloud tail time, encoded bytes each way.

        Bytes come from encoding the real activations of ``sample`` (default: a
        uniform random input), since zstd's ratio depends on the data.

        Raises:
            InvalidRequestError: the cloud's model differs from this file.
            TransportError: the cloud is unreachable.
        """
        p = self.partitioner
        feeds = dict(sample) if sample is not None else self._random_input()
        tails: dict[str, float] = {}
        if self.cloud is not None:
            sha, _provider, tails = self.cloud.profile_tails(self.name, repeats)
            if sha != p.sha256:
                from edgecloud.errors import InvalidRequestError

                raise InvalidRequestError(
                    f"the cloud's {self.name!r} is not this file (sha256 {sha[:12]}… vs "
                    f"{p.sha256[:12]}…)"
                )
            self.probe_link()
        outputs = self._whole.run(feeds)
        down = sum(len(encode(n, v, "float32").payload) for n, v in outputs.items())
        profiles = []
        for cut in p.cuts():
            local = set(cut.tensors) == set(p.outputs)
            times = []
            acts: dict[str, Any] = {}
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                acts = self.run_head(cut, feeds)
                times.append(time.perf_counter() - t0)
            head_s = statistics.median(times[1:]) if cut.head_nodes else 0.0
            up = 0
            if not local:
                up = sum(
                    len(encode(n, acts[n], self.encoding, self.compression).payload)
                    for n in cut.tensors
                )
            profiles.append(
                CutProfile(
                    cut=cut,
                    head_s=head_s,
                    tail_s=tails.get(cut.name, 0.0),
                    up_bytes=up,
                    down_bytes=0 if local else down,
                    local=local,
                )
            )
        self.profiles = profiles
        return profiles

    def _random_input(self) -> dict[str, np.ndarray[Any, Any]]:
        rng = np.random.default_rng(0)
        feeds = {}
        for spec in self._whole.inputs:
            shape = tuple(1 if d is None else d for d in spec.shape)
            feeds[spec.name] = rng.random(shape).astype(spec.dtype)
        return feeds

    def cloud_available(self) -> bool:
        return self.cloud is not None and time.monotonic() >= self._cloud_down_until

    def choose(self) -> tuple[CutCost, list[CutCost]]:
        """The best cut under the current link estimate (profiles first if needed)."""
        if not self.profiles:
            self.profile()
        return choose_cut(
            self.profiles,
            self.link.estimate,
            objective=self.objective,
            power=self.power,
            cloud_available=self.cloud_available(),
        )

    def run(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], *, cut: int | str | None = None
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Compute the graph outputs, splitting at the chosen cut (or at ``cut``).

        Falls back to running everything here when the cloud fails.

        Raises:
            AuthError: the cloud refused the credentials (no fallback: fix the token).
            InvalidRequestError: bad inputs, or a refused cut/activation.
            InvalidCutError: ``cut`` is not a valid cut.
        """
        if cut is None and not self.profiles:
            self.profile()  # once, before the clock starts: it is not part of this call
        if cut is None:
            self._maybe_probe()
        t0 = time.perf_counter()
        if cut is None:
            best, _ = self.choose()
            chosen, predicted = best.profile.cut, best.latency_s
        else:
            chosen, predicted = self.partitioner.cut(cut), float("nan")
        acts = self.run_head(chosen, inputs)
        head_s = time.perf_counter() - t0
        if set(chosen.tensors) == set(self.partitioner.outputs):
            self.last = RunInfo(chosen, predicted, time.perf_counter() - t0, head_s, False)
            return acts
        if self.cloud is None:
            raise InvalidCutError("this SplitModel has no cloud; only the all-device cut runs")
        try:
            r = self.cloud.run_tail(
                self.name,
                chosen.tensors,
                acts,
                model_sha256=self.partitioner.sha256,
                encoding=self.encoding,
                compression=self.compression,
            )
        except AuthError:
            raise  # a configuration mistake to surface, not an outage to ride out
        except TransportError:
            return self._fallback(inputs, chosen, predicted, t0)
        except EdgeCloudError as exc:
            if exc.retryable:
                return self._fallback(inputs, chosen, predicted, t0)
            raise
        self.link.observe_transfer(r.up_bytes + r.down_bytes, r.wire_s)
        self.last = RunInfo(chosen, predicted, time.perf_counter() - t0, head_s, False)
        return r.outputs

    def _maybe_probe(self) -> None:
        # Remote calls keep the estimate fresh; all-local ones send nothing, so probe.
        if not self.cloud_available() or time.monotonic() - self._last_probe < self._probe_interval:
            return
        if self.last is not None and self.last.cut.tensors != self.partitioner.outputs:
            return
        try:
            self.probe_link()
        except TransportError:
            self._cloud_down_until = time.monotonic() + self._retry_s

    def _fallback(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], cut: Cut, predicted: float, t0: float
    ) -> dict[str, np.ndarray[Any, Any]]:
        self._cloud_down_until = time.monotonic() + self._retry_s
        out = self._whole.run(inputs)
        self.last = RunInfo(cut, predicted, time.perf_counter() - t0, 0.0, True)
        return dict(out)

    def close(self) -> None:
        with self._lock:
            for b in self._heads.values():
                b.close()
            self._heads.clear()
        self._whole.close()
        if self.cloud is not None:
            self.cloud.close()
        self._cleanup()
