"""Tiny inputs for tests, made on the fly (no torch needed for these)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np


def tiny_onnx_bytes() -> bytes:
    """A valid ONNX model: y = relu(x @ W) with x of shape (N, 4)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def npz_bytes(n: int = 40, features: int = 4, classes: int = 3) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.normal(size=(n, features)).astype(np.float32),
        y_train=rng.integers(0, classes, n),
        x_val=rng.normal(size=(n // 2, features)).astype(np.float32),
        y_val=rng.integers(0, classes, n // 2),
    )
    return buffer.getvalue()


class _Boom:
    """Unpickling this would create ``marker`` — proof that a file was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Boom(marker), protocol=4)


def digits_mlp_onnx(hidden: int = 16, tile: int = 0) -> bytes:
    """An ONNX MLP for the builtin ``digits`` data (input (N, 1, 8, 8), 10 classes), made
    without torch. ``tile`` > 0 first repeats the input ``tile`` times along the channels
    (then averages them away): the model stays tiny on disk but needs ``tile`` × 256 bytes
    of memory per sample, which is how the out-of-memory tests ask for too much."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array((rng.normal(size=(64, hidden)) * 0.1).astype(np.float32), "W1"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "B1"),
        numpy_helper.from_array((rng.normal(size=(hidden, 10)) * 0.1).astype(np.float32), "W2"),
        numpy_helper.from_array(np.zeros(10, np.float32), "B2"),
    ]
    nodes, source = [], "x"
    if tile:
        initializers.append(numpy_helper.from_array(np.array([1, tile, 1, 1], np.int64), "repeats"))
        nodes += [
            helper.make_node("Tile", ["x", "repeats"], ["tiled"]),
            helper.make_node("ReduceMean", ["tiled"], ["mean"], axes=[1], keepdims=1),
        ]
        source = "mean"
    nodes += [
        helper.make_node("Flatten", [source], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W1", "B1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["relu"]),
        helper.make_node("Gemm", ["relu", "W2", "B2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
