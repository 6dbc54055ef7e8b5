"""Tiny ONNX graphs built with onnx.helper, so unit tests need no model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _w(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def chain(path: Path) -> Path:
    """x(?,8) -> MatMul -> Relu -> MatMul -> Relu -> MatMul -> y(?,3)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [_w("w1", (8, 16), 1), _w("w2", (16, 4), 2), _w("w3", (4, 3), 3)],
    )
    return save(graph, path)


def residual(path: Path) -> Path:
    """x -> a=Relu(x W1) -> b=Relu(a W2) -> c=a+b -> y=c W3: a and c cut, b does not."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a0"], name="mm1"),
        helper.make_node("Relu", ["a0"], ["a"], name="relu1"),
        helper.make_node("MatMul", ["a", "w2"], ["b0"], name="mm2"),
        helper.make_node("Relu", ["b0"], ["b"], name="relu2"),
        helper.make_node("Add", ["a", "b"], ["c"], name="add"),
        helper.make_node("MatMul", ["c", "w3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [_w("w1", (6, 5), 4), _w("w2", (5, 5), 5), _w("w3", (5, 2), 6)],
    )
    return save(graph, path)


def two_inputs(path: Path) -> Path:
    """y = Relu(x1 W) + x2: x2 bypasses everything, so only {h, x2}-style cuts separate."""
    nodes = [
        helper.make_node("MatMul", ["x1", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x2"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("x1", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [_w("w", (4, 3), 7)],
    )
    return save(graph, path)


def masked(path: Path) -> Path:
    """Two "layers" that both read a bias derived from a mask input, plus constant shape math.

    h1 = Relu(x W1) + bias; h2 = Relu(h1 W2) + bias; y = h2 W3, with
    bias = Cast(mask) * k and a shape tensor built from initializers only (duplicable).
    """
    nodes = [
        helper.make_node("Cast", ["mask"], ["mf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mf", "k"], ["bias"], name="bias"),
        helper.make_node("Add", ["two", "two"], ["four"], name="const_add"),  # constants only
        helper.make_node("MatMul", ["x", "w1"], ["a0"], name="mm1"),
        helper.make_node("Relu", ["a0"], ["a1"], name="relu1"),
        helper.make_node("Add", ["a1", "bias"], ["h1"], name="add1"),
        helper.make_node("MatMul", ["h1", "w2"], ["b0"], name="mm2"),
        helper.make_node("Relu", ["b0"], ["b1"], name="relu2"),
        helper.make_node("Add", ["b1", "bias"], ["h2"], name="add2"),
        helper.make_node("Mul", ["h2", "four"], ["h3"], name="scale"),
        helper.make_node("MatMul", ["h3", "w3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes,
        "masked",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", 6]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [
            _w("w1", (6, 6), 8), _w("w2", (6, 6), 9), _w("w3", (6, 2), 10),
            numpy_helper.from_array(np.array(-3.0, np.float32), "k"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )  # fmt: skip
    return save(graph, path)


def with_if(path: Path) -> Path:
    """y = If(cond) then Relu(x W) else x W: a subgraph that reads the outer ``h``."""
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["t"], name="then_relu")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 3])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["e"], name="else_id")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 3])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes,
        "with_if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [_w("w", (4, 3), 11)],
    )
    return save(graph, path)


def constant_output(path: Path) -> Path:
    """Two outputs: y = x W, and ``c``, which no input reaches (W summed: a constant)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
        helper.make_node("ReduceSum", ["w"], ["c"], name="sum", keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_output",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, []),
        ],
        [_w("w", (4, 3), 12)],
    )
    return save(graph, path)


def custom_op(path: Path) -> Path:
    """x -> Relu -> com.example.Frobnicate -> y: an op no onnxruntime has."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Frobnicate", ["r"], ["y"], name="frob", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "custom_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 8
    onnx.save(model, path)
    return path
