"""Tiny inputs for tests, made on the fly (no torch needed for these)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np


def tiny_onnx_bytes() -> bytes:
    """A valid ONNX model: y = relu(x @ W) with x of shape (N, 4)."""
    import onnx
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
        x_train=rng.normal(size=(n, features)).astype(np.float32), y_train=rng.integers(0, classes, n),
        x_val=rng.normal(size=(n // 2, features)).astype(np.float32), y_val=rng.integers(0, classes, n // 2),
    )  # fmt: skip
    return buffer.getvalue()


class _Boom:
    """Unpickling this would create ``marker`` — proof that a file was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Boom(marker), protocol=4)
