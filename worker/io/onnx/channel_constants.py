"""Per-channel constants (``Mul/Add/Sub/Div`` by a ``[1, C, 1, 1]`` initializer) → ``shears::ChannelConstant``.

The node becomes one module that owns the ``C`` values as a parameter
(:class:`worker.pruning.custom_layers.ChannelConstant`), so Torch-Pruning removes them
together with their channels instead of failing on a broadcast (``255`` vs ``256``).
Only constants that vary along axis 1 alone, with the other operand's rank known, are
rewritten; scalars stay as they are (they follow any channel count).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from worker.io.onnx.runtime import (
    SHEARS_DOMAIN,
    OnnxGraph,
    OnnxMapping,
    OnnxNode,
    OperationConverterResult,
    add_converter,
)
from worker.pruning.custom_layers import ChannelConstant

_OPS = {"Mul": "mul", "Add": "add", "Sub": "sub", "Div": "div"}


def _channel_axis_values(const: np.ndarray, rank: int) -> np.ndarray | None:
    """The ``[C]`` values when ``const`` broadcasts against a rank-``rank`` tensor along axis 1 only."""
    if rank < 2 or const.ndim > rank or const.ndim == 0:
        return None
    dims = [1] * (rank - const.ndim) + list(const.shape)
    if dims[0] != 1 or dims[1] < 2 or any(d != 1 for i, d in enumerate(dims) if i != 1):
        return None
    return const.reshape(-1)


def rewrite_channel_constants(graph: onnx.GraphProto, shapes: dict[str, list[int | str | None]]) -> int:
    """Rewrite per-channel constant arithmetic into ``shears::ChannelConstant``; return rewrites made."""
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    count = 0
    stale: set[str] = set()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS or len(node.input) != 2:
            continue
        a, b = node.input
        if (a in inits) == (b in inits):
            continue
        swap = a in inits
        const_name, x_name = (a, b) if swap else (b, a)
        x_dims = shapes.get(x_name)
        tensor = inits[const_name]
        if not x_dims or uses.get(const_name, 0) != 1 or tensor.data_type not in (onnx.TensorProto.FLOAT,):
            continue
        values = _channel_axis_values(numpy_helper.to_array(tensor), len(x_dims))
        if values is None or (isinstance(x_dims[1], int) and x_dims[1] != values.size):
            continue
        new_const = numpy_helper.from_array(values.astype(np.float32), const_name)
        tensor.CopyFrom(new_const)
        new = helper.make_node(
            "ChannelConstant",
            [x_name, const_name],
            list(node.output),
            name=node.name,
            domain=SHEARS_DOMAIN,
            op=_OPS[node.op_type],
            rank=len(x_dims),
            swap=int(swap),
        )
        node.CopyFrom(new)
        count += 1
        stale.add(const_name)
    for field in (graph.value_info, graph.input):  # declared [1, C, 1, 1] shapes of the rewritten constants
        kept = [v for v in field if v.name not in stale]
        del field[:]
        field.extend(kept)
    return count


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    values = graph.initializers[node.input_values[1]].to_torch()
    module = ChannelConstant(
        node.attributes["op"],
        torch.as_tensor(values),
        int(node.attributes["rank"]),
        bool(node.attributes.get("swap", 0)),
    )
    return OperationConverterResult(module, OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))


try:
    add_converter(operation_type="ChannelConstant", version=1, domain=SHEARS_DOMAIN)(_convert)
except ValueError:
    pass  # already registered
