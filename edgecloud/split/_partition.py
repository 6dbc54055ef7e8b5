"""Cutting an ONNX graph into a device head and a cloud tail.

Extraction itself is ``onnx.utils.Extractor``; this module only decides which
tensor sets are valid cuts and names the pieces. A cut is a set of tensors that
separates the graph inputs from the graph outputs: the head computes the cut
from the inputs, the tail computes the outputs from the cut (and constants)
alone. :meth:`Partitioner.cuts` lists the single tensors on the topological
order that satisfy this, plus the two trivial cuts: the graph inputs
(all-cloud) and the graph outputs (all-device). :meth:`Partitioner.multi_cuts`
lists the cut of every prefix of the topological order, sets of tensors where a
skip connection or a shared mask leaves no single tensor (see ``_graph.py``,
which also finds the best partition by min-cut).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecloud.errors import InvalidCutError, ModelIntegrityError, ModelNotFoundError
from edgecloud.split._graph import Dag

__all__ = ["Cut", "Partitioner", "TensorInfo"]

# onnx TensorProto element types -> numpy dtype names (the ones a CNN cut carries).
_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
}


@dataclass(frozen=True)
class TensorInfo:
    """Name, numpy dtype and shape (None for a symbolic dimension such as the batch)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def nbytes(self, batch: int = 1) -> int:
        """Bytes of one activation, with symbolic dimensions set to ``batch``."""
        size = {"float16": 2, "float64": 8, "int64": 8, "int16": 2, "int8": 1, "uint8": 1}
        n = size.get(self.dtype, 4)
        for d in self.shape:
            n *= batch if d is None else d
        return n


@dataclass(frozen=True)
class Cut:
    """One way to split the graph.

    Attributes:
        index: position on the topological order: 0 is all-cloud (the cut is the
            graph inputs), ``len(cuts) - 1`` is all-device (the graph outputs).
        tensors: the tensors that cross from device to cloud.
        after_node: the node that produces the cut ("" for the graph inputs).
        head_nodes: how many graph nodes run on the device.
    """

    index: int
    tensors: tuple[str, ...]
    after_node: str
    head_nodes: int

    @property
    def name(self) -> str:
        """Stable name: the cut's tensors joined by ``+``."""
        return "+".join(self.tensors)


class Partitioner:
    """Loads an ONNX model once and cuts it into head/tail models.

    Args:
        path: the ``.onnx`` file.

    Raises:
        ModelNotFoundError: no such file.
        ModelIntegrityError: the file is not a valid ONNX model.

    Examples:
        >>> p = Partitioner("examples/split/models/digits_cnn.onnx")   # doctest: +SKIP
        >>> cut = p.cuts()[3]
        >>> head, tail = p.split(cut)       # two onnx.ModelProto
    """

    def __init__(self, path: str | Path) -> None:
        import onnx
        import onnx.utils

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelNotFoundError(f"no ONNX model at {self.path}")
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            model = onnx.load_from_string(data)
            onnx.checker.check_model(model)
            # Shape inference gives every intermediate tensor a type, which the tail
            # needs for its input and we need for activation sizes.
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
            _name_nodes(model.graph)
            self._extractor = onnx.utils.Extractor(model)
        except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
            raise ModelIntegrityError(f"{self.path} is not a valid ONNX model: {exc}") from exc
        self.model = self._extractor.model
        graph = self.model.graph
        init = {i.name for i in graph.initializer}
        self.inputs = tuple(i.name for i in graph.input if i.name not in init)
        self.outputs = tuple(o.name for o in graph.output)
        self._constants = init | {
            o for n in graph.node if n.op_type == "Constant" for o in n.output
        }
        self._producer: dict[str, int] = {}
        for i, node in enumerate(graph.node):
            for out in node.output:
                self._producer[out] = i
        self.dag = Dag(
            ((n.name, n.op_type, list(n.input), list(n.output)) for n in graph.node),
            self.inputs,
            self.outputs,
            self._constants,
        )
        self._cuts = self._enumerate()
        self._frontier = self._frontier_cuts()

    @property
    def unsupported(self) -> str:
        """Why this graph only splits all-device or all-cloud ("" when it splits anywhere)."""
        if self.dag.control_flow:
            ops = sorted({n.op for n in self.dag.nodes if n.name in self.dag.control_flow})
            return (
                f"{self.path.name} has control flow ({', '.join(ops)} in "
                f"{', '.join(self.dag.control_flow[:3])}), whose subgraphs read outer "
                "tensors by name; it runs whole, all-device or all-cloud"
            )
        return ""

    def tensor(self, name: str) -> TensorInfo:
        """Type and shape of any value in the graph.

        Raises:
            InvalidCutError: the graph has no such tensor, or it has no known type.
        """
        vi = self._extractor.value_infos.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            raise InvalidCutError(f"{self.path.name} has no typed tensor named {name!r}")
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        return TensorInfo(name, _ONNX_DTYPES.get(tt.elem_type, f"onnx:{tt.elem_type}"), shape)

    def cuts(self) -> list[Cut]:
        """The single-tensor candidate cuts, all-cloud first, all-device last."""
        return list(self._cuts)

    def multi_cuts(self) -> list[Cut]:
        """Every cut between a prefix of the topological order and the rest, as tensor sets.

        On a chain these are :meth:`cuts`; where a skip connection or a mask shared
        by every layer stops single tensors from separating the graph, they are the
        multi-tensor cuts (``hidden+mask``). Indices are positions in this list.
        """
        return list(self._frontier)

    def cut_of(self, device_nodes: Iterable[str]) -> Cut:
        """The cut of a node partition: the tensors it sends (see :class:`Dag`)."""
        tensors = self.dag.crossing(device_nodes)
        for c in self._frontier:
            if set(c.tensors) == set(tensors):
                return c
        return self.cut(tensors)

    def cut(self, spec: int | str | Sequence[str]) -> Cut:
        """A cut by index, by name (``"a+b"``), or by its tensors (validated).

        Raises:
            InvalidCutError: out of range, unknown tensor, or not separating.
        """
        if isinstance(spec, int):
            if not -len(self._cuts) <= spec < len(self._cuts):
                raise InvalidCutError(f"cut index {spec} out of range (0..{len(self._cuts) - 1})")
            return self._cuts[spec]
        tensors = tuple(spec.split("+")) if isinstance(spec, str) else tuple(spec)
        for c in self._cuts:
            if set(c.tensors) == set(tensors):
                return c
        self.check_separates(tensors)
        if self.unsupported:
            raise InvalidCutError(self.unsupported)
        last = max((self._producer.get(t, -1) for t in tensors), default=-1)
        head = len(self._head_nodes(tensors))
        after = self.model.graph.node[last].name if last >= 0 else ""
        return Cut(index=-1, tensors=tensors, after_node=after, head_nodes=head)

    def check_separates(self, tensors: Iterable[str]) -> None:
        """Raise unless ``tensors`` separate the graph inputs from the graph outputs.

        Raises:
            InvalidCutError: a tensor is unknown, or some output still depends on a
                graph input through a path that avoids the cut.
        """
        cut = tuple(tensors)
        if not cut:
            raise InvalidCutError("a cut needs at least one tensor")
        for t in cut:
            if t not in self._producer and t not in self.inputs:
                raise InvalidCutError(f"{self.path.name} has no tensor named {t!r}")
        leak = self._reaches_input(self.outputs, stop=set(cut))
        if leak is not None:
            raise InvalidCutError(
                f"cut {list(cut)} does not separate the graph: output depends on input "
                f"{leak!r} through a path that avoids the cut"
            )

    def split(self, cut: Cut) -> tuple[Any | None, Any | None]:
        """The head and tail ``onnx.ModelProto`` of ``cut``; None where a side is empty."""
        head = None
        tail = None
        if set(cut.tensors) != set(self.inputs):
            head = self._extract(list(self.inputs), list(cut.tensors))
        if set(cut.tensors) != set(self.outputs):
            tail = self._extract(list(cut.tensors), list(self.outputs))
        return head, tail

    def head(self, cut: Cut) -> Any | None:
        """The device part of ``cut`` (None for all-cloud)."""
        if set(cut.tensors) == set(self.inputs):
            return None
        return self._extract(list(self.inputs), list(cut.tensors))

    def tail(self, cut: Cut) -> Any | None:
        """The cloud part of ``cut`` (None for all-device)."""
        if set(cut.tensors) == set(self.outputs):
            return None
        return self._extract(list(cut.tensors), list(self.outputs))

    def profile_nodes(
        self,
        feeds: Mapping[str, Any],
        *,
        repeats: int = 5,
        providers: Sequence[str] | None = None,
        threads: int = 1,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Seconds of every node, and the value of every tensor, on these inputs.

        The values give the real size of every tensor, dynamic batch and sequence
        dimensions resolved from ``feeds``.

        Raises:
            DeviceError: the graph fails on ``feeds``.
        """
        import onnx

        from edgecloud.common.onnx import profile_nodes

        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        have = {o.name for o in probe.graph.output}
        for node in probe.graph.node:
            for t in node.output:
                if t and t not in have:
                    vi = self._extractor.value_infos.get(t)
                    probe.graph.output.append(
                        vi if vi is not None else onnx.helper.make_empty_tensor_value_info(t)
                    )
                    have.add(t)
        return profile_nodes(
            probe.SerializeToString(),
            feeds,
            repeats=repeats,
            providers=providers,
            intra_op_threads=threads,
        )

    def _extract(self, inputs: list[str], outputs: list[str]) -> Any:
        if set(inputs) == set(self.inputs) and set(outputs) == set(self.outputs):
            import onnx

            whole = onnx.ModelProto()
            whole.CopyFrom(self.model)  # the whole graph, subgraphs and all
            return whole
        model = self._extractor.extract_model(inputs, outputs)
        # keep the opset imports and IR version of the original model
        del model.opset_import[:]
        model.opset_import.extend(self.model.opset_import)
        model.ir_version = self.model.ir_version
        return model

    def _reaches_input(self, targets: Iterable[str], stop: set[str]) -> str | None:
        """A graph input that ``targets`` depend on without passing ``stop``, if any."""
        graph = self.model.graph
        inputs = set(self.inputs)
        seen: set[str] = set()
        todo = [t for t in targets if t not in stop]
        while todo:
            t = todo.pop()
            if t in seen or t in self._constants:
                continue
            seen.add(t)
            if t in inputs:
                return t
            node = self._producer.get(t)
            if node is None:
                continue
            todo.extend(i for i in graph.node[node].input if i and i not in stop)
        return None

    def _head_nodes(self, cut: Sequence[str]) -> set[int]:
        graph = self.model.graph
        nodes: set[int] = set()
        todo = [t for t in cut if t not in self.inputs]
        while todo:
            n = self._producer.get(todo.pop())
            if n is None or n in nodes:
                continue
            nodes.add(n)
            todo.extend(i for i in graph.node[n].input if i and i not in self.inputs)
        return nodes

    def _frontier_cuts(self) -> list[Cut]:
        if self.unsupported:
            return list(self._cuts)
        cuts = []
        for i, tensors in enumerate(self.dag.frontier_cuts()):
            last = max((self._producer.get(t, -1) for t in tensors), default=-1)
            after = self.model.graph.node[last].name if last >= 0 else ""
            cuts.append(Cut(i, tensors, after, len(self._head_nodes(tensors))))
        return cuts

    def _enumerate(self) -> list[Cut]:
        graph = self.model.graph
        cuts = [Cut(0, self.inputs, "", 0)]
        if self.dag.control_flow:
            cuts.append(Cut(1, self.outputs, graph.node[-1].name, len(graph.node)))
            return cuts
        outputs = set(self.outputs)
        for node in graph.node:
            for t in node.output:
                if not t or t in outputs or t in self._constants:
                    continue
                if self._reaches_input(self.outputs, stop={t}) is not None:
                    continue
                # Only tensors downstream of an input are worth sending (not constant folds),
                # and only tensors with a known type can be checked at the cloud.
                if (
                    self._reaches_input([t], stop=set()) is None
                    or t not in self._extractor.value_infos
                ):
                    continue
                cuts.append(Cut(len(cuts), (t,), node.name, len(self._head_nodes((t,)))))
        cuts.append(Cut(len(cuts), self.outputs, graph.node[-1].name, len(graph.node)))
        return cuts


def _name_nodes(graph: Any) -> None:
    """Give every node a unique name: per-node costs are keyed by it.

    The file is not changed (its sha256 still names it), and both sides name the
    same file the same way.
    """
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}#{i}"
        seen.add(node.name)
