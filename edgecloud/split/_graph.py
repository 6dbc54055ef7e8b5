"""Cuts as sets of tensors on the ONNX DAG, and the best one by s-t min-cut.

A cut is a partition of the graph's nodes: the device set is closed under
predecessors (nothing computed in the cloud flows back), and every tensor that
crosses from a device node (or a graph input) to a cloud node is sent once,
however many cloud nodes read it. A transformer's attention mask, read by every
layer, or a skip connection makes every middle cut a set of several tensors;
single-tensor cuts alone would offer none.

The best cut under a cost model is an s-t minimum cut (DADS, Hu et al.,
INFOCOM 2019): source = device, sink = cloud, and

* ``source -> node`` with the node's cloud time (paid when it runs in the cloud),
* ``node -> sink`` with its device time (paid when it runs here),
* ``producer -> tensor -> consumers`` with the tensor's transfer time on the first
  edge and infinite capacity on the others, so a tensor read by many cloud nodes
  is paid once,
* ``consumer -> producer`` infinite, so a device node never waits for the cloud,
* ``device outputs -> producer`` with the download time of each graph output,
  paid when the cloud computes it.

The round trip is a constant of every partition that uses the cloud, so it is
added after the cut and compared against all-device (the only partition
without it); the result is exact for this cost model. Nodes that read only
constants (weights, ``Constant``, shape arithmetic on them) are duplicable:
both sides recompute them, they never cross and cost nothing. And a tensor
made by a light op (``Shape``, ``Cast``, ``Unsqueeze``, ...) from tensors that
cross anyway does not cross: the cloud recomputes it (``Shape(input_ids)``
next to ``input_ids``).

Pure Python on the graph's structure; onnx is not imported here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CONTROL_FLOW", "RECOMPUTABLE", "Dag", "GraphCosts", "max_flow_min_cut"]

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
"""Ops whose subgraphs read tensors of the outer graph by name, out of sight of the DAG."""

RECOMPUTABLE = frozenset(
    {"Shape", "Size", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity",
     "Gather", "Slice", "Concat", "Transpose", "Expand", "Range", "ConstantOfShape",
     "Equal", "Not", "Neg", "Add", "Sub", "Mul", "Div", "Where"}
)  # fmt: skip
"""Light ops the cloud recomputes from tensors it gets rather than receive their output."""

_INF = 1 << 62
_NS = 1e9  # capacities are integer nanoseconds: exact arithmetic in the flow


@dataclass(frozen=True)
class GraphCosts:
    """Measured costs of every node and tensor, for one input shape.

    Attributes:
        device_s: seconds of each node on the device (by node name).
        cloud_s: seconds of each node in the cloud.
        tensor_bytes: bytes each tensor takes on the wire, encoded as it would be sent.
        output_bytes: bytes of each graph output on the way back.
    """

    device_s: Mapping[str, float]
    cloud_s: Mapping[str, float]
    tensor_bytes: Mapping[str, int]
    output_bytes: Mapping[str, int]


@dataclass(frozen=True)
class _Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class Dag:
    """The data-flow graph of a model, without the duplicable nodes.

    Args:
        nodes: ``(name, op_type, inputs, outputs)`` in topological order; names unique.
        inputs: the graph inputs (not initializers).
        outputs: the graph outputs.
        constants: initializers and ``Constant`` outputs.
    """

    def __init__(
        self,
        nodes: Iterable[tuple[str, str, Sequence[str], Sequence[str]]],
        inputs: Sequence[str],
        outputs: Sequence[str],
        constants: Iterable[str],
    ) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        const = set(constants)
        self.duplicable: set[str] = set()
        kept: list[_Node] = []
        for name, op, ins, outs in nodes:
            real = [t for t in ins if t]
            if all(t in const for t in real) and op not in CONTROL_FLOW:
                self.duplicable.add(name)
                const.update(outs)
                continue
            kept.append(_Node(name, op, tuple(t for t in real if t not in const), tuple(outs)))
        self.nodes = tuple(kept)
        self.constants = frozenset(const)
        self.control_flow = tuple(n.name for n in kept if n.op in CONTROL_FLOW)
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = {}
        for n in kept:
            for t in n.outputs:
                if t:
                    self.producer[t] = n.name
            for t in dict.fromkeys(n.inputs):
                self.consumers.setdefault(t, []).append(n.name)
        self._by_name = {n.name: n for n in kept}

    def crossing(self, device: Iterable[str]) -> tuple[str, ...]:
        """The tensors a partition sends: read in the cloud, made here (or a graph input).

        All-device (every node here) sends the graph outputs, the convention of the
        trivial cut; all-cloud sends every graph input.
        """
        here = set(device)
        if all(n.name in here for n in self.nodes):
            return self.outputs
        cloud = [n for n in self.nodes if n.name not in here]
        sent: dict[str, None] = {}
        for n in cloud:
            for t in n.inputs:
                if self.producer.get(t, "") in here or t in self.inputs:
                    sent[t] = None
        # an output made here while the cloud makes others travels with the cut
        for t in self.outputs:
            if self.producer.get(t) in here:
                sent[t] = None
        if not here:
            for t in self.inputs:
                sent.setdefault(t, None)
            return tuple(t for t in self.inputs if t in sent) + tuple(
                t for t in sent if t not in self.inputs
            )
        return tuple(self._recomputed(sent))

    def _recomputed(self, sent: dict[str, None]) -> dict[str, None]:
        """``sent`` without what the cloud can recompute from the rest: a tensor made
        by light ops (``Shape`` of a tensor it gets, then ``Gather``, ``Cast``,
        ``Unsqueeze``...) from tensors that cross anyway. The tail runs those ops."""
        outputs = set(self.outputs)

        def derivable(t: str, base: set[str], seen: set[str]) -> bool:
            if t in base:
                return True
            made = self.producer.get(t)
            if made is None or t in seen:
                return False
            node = self._by_name[made]
            if node.op not in RECOMPUTABLE or not node.inputs:
                return False
            seen.add(t)
            return all(derivable(i, base, seen) for i in node.inputs)

        for t in list(sent):
            if t in outputs or t in self.inputs:
                continue
            if derivable(t, set(sent) - {t}, set()):
                del sent[t]
        return sent

    def frontier_cuts(self) -> list[tuple[str, ...]]:
        """Every distinct cut between a prefix of the topological order and the rest.

        All-cloud first, all-device last; on a chain these are the single tensors,
        on a graph with skips or a shared mask they are the multi-tensor cuts.
        """
        seen: dict[frozenset[str], tuple[str, ...]] = {}
        here: list[str] = []
        for i in range(len(self.nodes) + 1):
            cut = self.crossing(here)
            seen.setdefault(frozenset(cut), cut)
            if i < len(self.nodes):
                here.append(self.nodes[i].name)
        return list(seen.values())

    def head_nodes(self, cut: Iterable[str]) -> set[str]:
        """Nodes the device runs to compute ``cut`` from the graph inputs."""
        return self._ancestors(cut, stop=set(self.inputs))

    def tail_nodes(self, cut: Iterable[str]) -> set[str]:
        """Nodes the cloud runs to compute the graph outputs from ``cut``."""
        return self._ancestors(self.outputs, stop=set(cut))

    def _ancestors(self, targets: Iterable[str], stop: set[str]) -> set[str]:
        found: set[str] = set()
        todo = [t for t in targets if t not in stop]
        while todo:
            name = self.producer.get(todo.pop())
            if name is None or name in found:
                continue
            found.add(name)
            todo.extend(t for t in self._by_name[name].inputs if t not in stop)
        return found

    def min_cut(self, costs: GraphCosts, bandwidth_Bps: float) -> set[str]:
        """The device node set of least ``device + cloud + transfer`` time (RTT excluded).

        Nodes missing from ``costs`` cost nothing; tensors missing from it are
        free to send (callers measure them all).
        """
        if bandwidth_Bps <= 0:
            raise ValueError("bandwidth must be positive")
        src, snk = 0, 1
        ids: dict[str, int] = {}

        def vid(key: str) -> int:
            if key not in ids:
                ids[key] = len(ids) + 2
            return ids[key]

        edges: list[tuple[int, int, int]] = []

        def ns(seconds: float) -> int:
            return max(0, round(seconds * _NS))

        for n in self.nodes:
            v = vid("n:" + n.name)
            edges.append((src, v, ns(costs.cloud_s.get(n.name, 0.0))))
            edges.append((v, snk, ns(costs.device_s.get(n.name, 0.0))))
        for t in self.inputs:
            edges.append((src, vid("n:<input>" + t), _INF))  # graph inputs are here
        for t, readers in self.consumers.items():
            made = self.producer.get(t)
            if made is None and t not in self.inputs:
                continue
            u = vid("n:" + made) if made is not None else vid("n:<input>" + t)
            x = vid("t:" + t)
            edges.append((u, x, ns(costs.tensor_bytes.get(t, 0) / bandwidth_Bps)))
            for r in readers:
                edges.append((x, vid("n:" + r), _INF))
                edges.append((vid("n:" + r), u, _INF))  # a device reader needs a device maker
        home = vid("<outputs>")
        edges.append((src, home, _INF))
        for t in self.outputs:
            made = self.producer.get(t)
            if made is not None:
                down = ns(costs.output_bytes.get(t, 0) / bandwidth_Bps)
                edges.append((home, vid("n:" + made), down))
        side = max_flow_min_cut(len(ids) + 2, edges, src, snk)
        return {n.name for n in self.nodes if side[ids["n:" + n.name]]}


def max_flow_min_cut(
    n: int, edges: Sequence[tuple[int, int, int]], source: int, sink: int
) -> list[bool]:
    """Dinic's max-flow; returns, per vertex, whether it is on the source side of a min cut.

    Args:
        n: vertex count (vertices are ``0..n-1``).
        edges: ``(from, to, integer capacity)``.
    """
    head = [-1] * n
    to: list[int] = []
    cap: list[int] = []
    nxt: list[int] = []
    for u, v, c in edges:
        for a, b, w in ((u, v, c), (v, u, 0)):
            to.append(b)
            cap.append(w)
            nxt.append(head[a])
            head[a] = len(to) - 1

    def levels() -> list[int]:
        level = [-1] * n
        level[source] = 0
        q = deque([source])
        while q:
            u = q.popleft()
            e = head[u]
            while e != -1:
                if cap[e] > 0 and level[to[e]] < 0:
                    level[to[e]] = level[u] + 1
                    q.append(to[e])
                e = nxt[e]
        return level

    while True:
        level = levels()
        if level[sink] < 0:
            break
        it = head[:]
        path: list[int] = []
        u = source
        while True:  # augmenting paths in the level graph, without recursion
            if u == sink:
                f = min(cap[e] for e in path)
                for e in path:
                    cap[e] -= f
                    cap[e ^ 1] += f
                path.clear()
                u = source
                continue
            while it[u] != -1 and not (cap[it[u]] > 0 and level[to[it[u]]] == level[u] + 1):
                it[u] = nxt[it[u]]
            if it[u] != -1:
                path.append(it[u])
                u = to[it[u]]
            elif u == source:
                break
            else:
                level[u] = -1  # a dead end: no path to the sink through it this phase
                e = path.pop()
                u = to[e ^ 1]
                it[u] = nxt[it[u]]
    return [d >= 0 for d in levels()]
