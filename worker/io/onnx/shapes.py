"""Shapes: values' static/symbolic dims, constant Reshape targets made batch-agnostic, input shapes."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from worker.io.onnx.passes import _all_names, _attr, _fresh_name, _infer


def _value_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Static/symbolic dims of every value ONNX shape inference can reach."""
    inferred = _infer(model)
    shapes: dict[str, list[int | str | None]] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims: list[int | str | None] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        shapes[value.name] = dims
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _batch_dim(graph: onnx.GraphProto, shapes: dict[str, list[int | str | None]]) -> int | str | None:
    inits = {t.name for t in graph.initializer}
    real_inputs = [v.name for v in graph.input if v.name not in inits]
    if len(real_inputs) != 1 or not shapes.get(real_inputs[0]):
        return None
    return shapes[real_inputs[0]][0]


def _rewrite_constant_reshapes(graph: onnx.GraphProto, shapes: dict[str, list[int | str | None]]) -> int:
    """Make Reshapes with a constant target keep the batch dimension; return rewrites made.

    ``Reshape(x[N, C, 1, 1], [N or -1 or 1, C])`` → ``Flatten(axis=1)`` (batch-agnostic
    and follows channel pruning); other constant targets whose first entry is the batch
    get ``0`` there (ONNX: copy the input's dimension). ``allowzero=1`` is dropped when the
    target has no zero (same meaning).
    """
    inits = {t.name: t for t in graph.initializer}
    batch = _batch_dim(graph, shapes)
    rewrites = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        target = [int(v) for v in numpy_helper.to_array(inits[node.input[1]]).reshape(-1)]
        allowzero = _attr(node, "allowzero", 0)
        if allowzero and 0 not in target:
            kept = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(kept)
            allowzero = 0
        dims = shapes.get(node.input[0])
        if batch is None or not dims or len(dims) < 2 or dims[0] != batch or not target:
            continue
        rest = dims[1:]
        rest_known = all(isinstance(d, int) and d > 0 for d in rest)
        rest_size = math.prod(rest) if rest_known else None  # type: ignore[arg-type]
        first_is_batch = target[0] in (-1, 0) or (isinstance(batch, int) and target[0] == batch)
        if len(target) == 2 and first_is_batch and rest_size is not None:
            if target[1] == rest_size or (target[1] == -1 and target[0] != -1):
                node.op_type = "Flatten"
                del node.input[1:]
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("axis", 1))
                rewrites += 1
                continue
        if allowzero or not first_is_batch or target[0] == 0 or -1 in target[1:] or rest_size is None:
            continue
        if target[0] == -1 and math.prod(target[1:]) != rest_size:
            continue
        new = numpy_helper.from_array(np.array([0] + target[1:], dtype=np.int64))
        new.name = _fresh_name(node.input[1], _all_names(graph))
        graph.initializer.append(new)
        node.input[1] = new.name
        rewrites += 1
    return rewrites


def onnx_input_shape(model: onnx.ModelProto) -> tuple[int, ...] | None:
    """Per-sample input shape (without the batch dimension), when static; else ``None``."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) < 2 or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
        return None
    return tuple(int(d.dim_value) for d in dims[1:])
