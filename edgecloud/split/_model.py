"""``SplitModel``: run an ONNX model partly here, partly in the cloud, at the best cut."""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgecloud.common.lifecycle import Closing
from edgecloud.errors import (
    AuthError,
    EdgeCloudError,
    InvalidCutError,
    InvalidRequestError,
    TransportError,
)
from edgecloud.split._client import SplitClient
from edgecloud.split._codec import Compression, Encoding, encode
from edgecloud.split._cost import (
    CutCost,
    CutProfile,
    LinkEstimator,
    PowerModel,
    choose_cut,
)
from edgecloud.split._graph import GraphCosts
from edgecloud.split._partition import Cut, Partitioner

__all__ = ["RunInfo", "SplitModel"]

_CALIBRATION_CALLS = 6
"""Calls of one head (per input shape) that calibrate the emulated device's time."""


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

    With ``planner="min-cut"`` (the default) the profile also times every graph
    node here and in the cloud and sizes every tensor at the real input's
    shapes, and each choice adds the s-t minimum cut of the node graph under the
    current link (:class:`~edgecloud.split._graph.Dag`) to the measured
    single-tensor cuts: on graphs with skip connections or a mask read by every
    layer, that is where the multi-tensor cuts come from. ``"enumerate"`` keeps
    to the single-tensor cuts.

    :meth:`stream` pipelines frames: the head of frame t+1 runs here while frame
    t crosses the link and runs its tail in the cloud.

    Args:
        model: the ``.onnx`` file (the cloud must serve the same file as ``name``).
        cloud: a :class:`SplitClient`, an address, or None for device only.
        name: the model's name on the cloud (default: the file stem).
        objective: ``"latency"`` or ``"energy"`` (device energy under ``power``).
        encoding, compression: how activations cross the wire.
        device_slowdown: emulate a device this many times slower than this host: a
            head takes this factor times its time here (its own time for the first
            calls, then fixed at their median).
        power: device power model for the energy objective.
        link_alpha: weight of the newest link sample in the moving estimate.
        threads: onnxruntime intra-op threads on the device (0: decide).
        cloud_retry_s: after a cloud failure, stay all-local this long.
        probe_interval_s: while the chosen cut sends nothing (all-local), probe
            the link this often so that a faster link is noticed.
        planner: ``"min-cut"`` or ``"enumerate"`` (see above).

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
        planner: Literal["min-cut", "enumerate"] = "min-cut",
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
        self.planner = planner
        self.graph_costs: GraphCosts | None = None
        self.last: RunInfo | None = None
        self._link_lock = threading.Lock()
        self._host_s: dict[Any, list[float]] = {}
        self._plans: dict[int, CutProfile] = {}

    @property
    def cuts(self) -> list[Cut]:
        """The candidate cuts: every prefix cut of the node graph (single tensors with
        ``planner="enumerate"``), all-cloud first, all-device last."""
        if self.planner == "min-cut":
            return self.partitioner.multi_cuts()
        return self.partitioner.cuts()

    def cut(self, spec: int | str | Sequence[str]) -> Cut:
        """A cut by index into :attr:`cuts`, by name (``"a+b"``) or by its tensors.

        Raises:
            InvalidCutError: out of range, unknown tensor, or not separating.
        """
        if isinstance(spec, int):
            cuts = self.cuts
            if not -len(cuts) <= spec < len(cuts):
                raise InvalidCutError(f"cut index {spec} out of range (0..{len(cuts) - 1})")
            return cuts[spec]
        return self.partitioner.cut(spec)

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
        """Run the device part of ``cut`` (with the emulated slowdown); returns the cut tensors.

        Raises:
            InvalidRequestError: the inputs are not the graph's (names, dtypes, shapes),
                checked here even when nothing runs here (all-cloud), so a bad frame
                never costs a round trip.
        """
        self._check_inputs(inputs)
        if set(cut.tensors) == set(self.partitioner.outputs):
            backend = self._whole
        else:
            backend = self._head(cut)
        if backend is None:
            return {n: np.asarray(inputs[n]) for n in cut.tensors}
        t0 = time.perf_counter()
        out = backend.run(inputs)
        if self.device_slowdown > 1.0:
            # The emulated device takes factor x the head's time on this host: for the
            # first calls, each call's own time; from then on the median of those (the
            # cold first call left out), fixed. A dedicated board does not slow down when
            # this shared host is busy, and factor x every measured time would multiply
            # each scheduling hiccup by the factor.
            took = time.perf_counter() - t0
            key = (cut.tensors, tuple(np.shape(inputs[n]) for n in sorted(inputs)))
            runs = self._host_s.setdefault(key, [])
            if len(runs) < _CALIBRATION_CALLS:
                runs.append(took)
                host = took
            else:
                host = statistics.median(runs[1:])
            time.sleep(max(0.0, host * self.device_slowdown - took))
        return dict(out)

    def _check_inputs(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> None:
        specs = {s.name: s for s in self._whole.inputs}
        if set(inputs) != set(specs):
            raise InvalidRequestError(
                f"inputs do not match the graph: missing {sorted(set(specs) - set(inputs))}, "
                f"unknown {sorted(set(inputs) - set(specs))}"
            )
        for name, spec in specs.items():
            value = np.asarray(inputs[name])
            if (
                str(value.dtype) != spec.dtype
                or value.ndim != len(spec.shape)
                or any(
                    w is not None and g != w for g, w in zip(value.shape, spec.shape, strict=True)
                )
            ):
                want = tuple("?" if d is None else d for d in spec.shape)
                raise InvalidRequestError(
                    f"input {name!r} is {value.dtype} {value.shape}; the graph wants "
                    f"{spec.dtype} {want}"
                )

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
        uniform random input with dynamic dimensions of 1; :meth:`run` and
        :meth:`stream` profile on their first frame), since zstd's ratio depends on
        the data and every size on the dynamic dimensions. Profile again for
        frames of another shape. With ``planner="min-cut"`` this also fills
        :attr:`graph_costs`: every node timed here and in the cloud, every tensor
        sized, at the shapes of ``sample``.

        Raises:
            InvalidRequestError: the cloud's model differs from this file.
            TransportError: the cloud is unreachable.
        """
        p = self.partitioner
        feeds = dict(sample) if sample is not None else self._random_input()
        tails: dict[str, float] = {}
        cloud_nodes: dict[str, float] = {}
        graph = self.planner == "min-cut" and not p.unsupported
        if self.cloud is not None:
            if graph:
                sha, tails, cloud_nodes = self.cloud.profile_nodes(self.name, feeds, repeats)
            else:
                sha, _provider, tails = self.cloud.profile_tails(self.name, repeats)
            if sha != p.sha256:
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
        self._plans.clear()
        if graph:
            self.graph_costs = self._graph_costs(feeds, repeats, profiles, tails, cloud_nodes)
        return profiles

    def _graph_costs(
        self,
        feeds: Mapping[str, np.ndarray[Any, Any]],
        repeats: int,
        profiles: Sequence[CutProfile],
        tails: Mapping[str, float],
        cloud_nodes: Mapping[str, float],
    ) -> GraphCosts:
        """Per-node times on both sides and per-tensor wire bytes, at the real shapes.

        Node times from onnxruntime's profiler add up to a little more or less than a
        session run (no fusion, no per-run overhead); each side is scaled so that its
        nodes add up to its measured whole-model time, which keeps the graph model
        and the measured single-tensor cuts on one scale.
        """
        p = self.partitioner
        host, values = p.profile_nodes(feeds, repeats=repeats, threads=self._threads)
        whole_here = next(x.head_s for x in profiles if x.local)
        device = _scaled(host, whole_here)
        whole_cloud = tails.get(p.cuts()[0].name, 0.0)
        cloud = _scaled(dict(cloud_nodes), whole_cloud) if cloud_nodes else dict(host)
        values.update(feeds)
        sizes = {
            n: len(encode(n, np.asarray(v), self.encoding, self.compression).payload)
            for n, v in values.items()
        }
        down = {n: len(encode(n, np.asarray(values[n]), "float32").payload) for n in p.outputs}
        return GraphCosts(device, cloud, sizes, down)

    def graph_profile(self, cut: Cut) -> CutProfile:
        """What ``cut`` costs by the node graph model (needs :meth:`profile` first)."""
        costs = self.graph_costs
        if costs is None:
            raise InvalidCutError("no graph profile: profile() with planner='min-cut' first")
        dag = self.partitioner.dag
        local = set(cut.tensors) == set(self.partitioner.outputs)
        return CutProfile(
            cut=cut,
            head_s=sum(costs.device_s.get(n, 0.0) for n in dag.head_nodes(cut.tensors)),
            tail_s=0.0
            if local
            else sum(costs.cloud_s.get(n, 0.0) for n in dag.tail_nodes(cut.tensors)),
            up_bytes=0 if local else sum(costs.tensor_bytes.get(t, 0) for t in cut.tensors),
            down_bytes=0 if local else sum(costs.output_bytes.values()),
            local=local,
        )

    def multi_profiles(self) -> list[CutProfile]:
        """:meth:`graph_profile` of every cut in :attr:`cuts` (multi-tensor ones included)."""
        return [self.graph_profile(c) for c in self.cuts]

    def plan(self) -> CutProfile | None:
        """The min-cut partition under the current link estimate (None without a graph
        profile); a single-tensor cut keeps its measured profile."""
        if self.graph_costs is None:
            return None
        with self._link_lock:
            bandwidth = self.link.estimate.bandwidth_Bps
        # The partition depends on the bandwidth alone (the RTT is the same for every
        # remote cut): one min-cut per 2% band, not one per call (ms on a large graph).
        band = round(math.log(bandwidth) / math.log(1.02))
        cached = self._plans.get(band)
        if cached is not None:
            return cached
        nodes = self.partitioner.dag.min_cut(self.graph_costs, bandwidth)
        cut = self.partitioner.cut_of(nodes)
        planned = next(
            (m for m in self.profiles if set(m.cut.tensors) == set(cut.tensors)),
            None,
        ) or self.graph_profile(cut)
        if len(self._plans) > 256:
            self._plans.clear()
        self._plans[band] = planned
        return planned

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
        candidates = list(self.profiles)
        planned = self.plan()
        if planned is not None and all(planned is not c for c in candidates):
            candidates.append(planned)
        with self._link_lock:
            estimate = self.link.estimate
        return choose_cut(
            candidates,
            estimate,
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
        chosen, predicted, t0 = self._start(cut, inputs)
        acts = self.run_head(chosen, inputs)
        out, self.last = self._finish(inputs, chosen, predicted, t0, acts)
        return out

    def stream(
        self,
        frames: Iterable[Mapping[str, np.ndarray[Any, Any]]],
        *,
        cut: int | str | None = None,
        max_in_flight: int = 2,
    ) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
        """Outputs of each frame, in order, with the device and the link working at once.

        The head of frame t+1 runs here while frame t crosses the link and runs its
        tail in the cloud, so a steady stream goes at the pace of the slower of the
        two instead of their sum. At most ``max_in_flight`` frames are sent and not
        yet answered: memory stays bounded and a slow link pushes back on the camera.
        Each frame chooses its cut (unless ``cut`` fixes one) and falls back to
        running here when the cloud fails, as :meth:`run` does; :attr:`last`
        describes the frame just yielded.

        Raises:
            ValueError: ``max_in_flight`` below 1.
            AuthError, InvalidRequestError, InvalidCutError: as :meth:`run`, when the
                frame that raised is reached.

        Examples:
            >>> for out in model.stream({"input": f} for f in camera):   # doctest: +SKIP
            ...     show(out["logits"].argmax())
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        pending: deque[Future[tuple[dict[str, Any], RunInfo]]] = deque()
        with ThreadPoolExecutor(max_in_flight, thread_name_prefix="edgecloud-split-tail") as pool:
            try:
                for inputs in frames:
                    chosen, predicted, t0 = self._start(cut, inputs)
                    acts = self.run_head(chosen, inputs)
                    pending.append(pool.submit(self._finish, inputs, chosen, predicted, t0, acts))
                    while pending and (pending[0].done() or len(pending) >= max_in_flight):
                        out, self.last = pending.popleft().result()
                        yield out
                while pending:
                    out, self.last = pending.popleft().result()
                    yield out
            finally:
                for f in pending:
                    f.cancel()

    def _start(
        self, cut: int | str | None, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> tuple[Cut, float, float]:
        """The cut of the next call, its predicted latency, and the clock at its start."""
        if cut is not None:
            return self.cut(cut), float("nan"), time.perf_counter()
        if not self.profiles:
            # once, before the clock starts: it is not part of this call; on this frame,
            # so that dynamic dimensions (batch, sequence) are the real ones
            self._check_inputs(inputs)
            self.profile(inputs)
        self._maybe_probe()
        t0 = time.perf_counter()
        best, _ = self.choose()
        return best.profile.cut, best.latency_s, t0

    def _finish(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        chosen: Cut,
        predicted: float,
        t0: float,
        acts: dict[str, Any],
    ) -> tuple[dict[str, np.ndarray[Any, Any]], RunInfo]:
        """Send the head's activations and get the outputs (or fall back to all here)."""
        head_s = time.perf_counter() - t0
        if set(chosen.tensors) == set(self.partitioner.outputs):
            return acts, RunInfo(chosen, predicted, time.perf_counter() - t0, head_s, False)
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
        except EdgeCloudError as exc:
            if not (isinstance(exc, TransportError) or exc.retryable):
                raise
            self._cloud_down_until = time.monotonic() + self._retry_s
            out = self._whole.run(inputs)
            return dict(out), RunInfo(chosen, predicted, time.perf_counter() - t0, 0.0, True)
        with self._link_lock:
            self.link.observe_transfer(r.up_bytes + r.down_bytes, r.wire_s)
        return r.outputs, RunInfo(chosen, predicted, time.perf_counter() - t0, head_s, False)

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

    def close(self) -> None:
        with self._lock:
            for b in self._heads.values():
                b.close()
            self._heads.clear()
        self._whole.close()
        if self.cloud is not None:
            self.cloud.close()
        self._cleanup()


def _scaled(times: Mapping[str, float], total: float) -> dict[str, float]:
    """``times`` scaled to add up to ``total`` (unchanged when either sum is zero)."""
    have = sum(times.values())
    k = total / have if have > 0 and total > 0 else 1.0
    return {n: t * k for n, t in times.items()}
