"""Shape arithmetic folded into constants, so the graph converts, exports and keeps a dynamic batch.

Exporters (paddle2onnx, torch's legacy exporter, tf2onnx) compute Reshape targets and
similar at run time: ``Shape(x) → Gather/Slice → Concat → Reshape``. onnx2torch turns such
values into Python numbers, so torch's exporters either fail (``torch.export``) or bake
the example's batch size into the graph (``Reshape ... requested shape {2,2}`` at batch 1).
With the values measured at batch 1 and batch 2 (:func:`worker.io.onnx.shapes.observed_shapes`):

- a shape-derived value (computed from ``Shape``/``Size`` only) that is the same at both
  batches is a constant: it becomes an initializer;
- a Reshape target that follows the batch becomes a constant with ``0`` (copy the input's
  batch) or ``-1`` where the batch goes, when the other entries are fixed; a target that
  flattens everything after the batch becomes ``Flatten(axis=1)``, which follows channel
  pruning.

Nodes left without consumers are then removed.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from worker.io.onnx.shapes import Observed

_SOURCES = frozenset({"Shape", "Size"})


def _shape_derived(graph: onnx.GraphProto) -> set[str]:
    inits = {t.name for t in graph.initializer}
    derived: set[str] = set()
    for node in graph.node:  # topological order
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _SOURCES or (
            node.input
            and all((not n) or n in inits or n in derived for n in node.input)
            and any(n in derived for n in node.input)
        ):
            derived.update(o for o in node.output if o)
    return derived


def _reshape_target(in_dims: list, out_dims: list) -> list[int] | None:
    if out_dims.count("batch") != 1 or any(d is None for d in out_dims):
        return None
    position = out_dims.index("batch")
    if position == 0 and in_dims and in_dims[0] == "batch":
        return [0, *out_dims[1:]]
    return [-1 if d == "batch" else int(d) for d in out_dims]


def fold_shape_computations(graph: onnx.GraphProto, observed: Observed) -> dict[str, int]:
    """Apply the rewrites of the module docstring in place; return counts."""
    values = getattr(observed, "values", {})
    derived = _shape_derived(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {t.name for t in graph.initializer}
    outputs = {v.name for v in graph.output}
    stats = {"shape_constants": 0, "reshape_targets": 0, "flattens": 0}
    for node in graph.node:
        if node.op_type == "Reshape" and node.domain in ("", "ai.onnx") and len(node.input) > 1:
            target = node.input[1]
            if target in inits or target not in derived:
                continue
            in_dims, out_dims = observed.get(node.input[0]), observed.get(node.output[0])
            if not in_dims or not out_dims:
                continue
            rest = in_dims[1:]
            if (
                len(out_dims) == 2
                and len(in_dims) >= 2
                and in_dims[0] == "batch"
                and out_dims[0] == "batch"
                and all(isinstance(d, int) for d in rest)
                and out_dims[1] == math.prod(rest)
            ):
                node.op_type = "Flatten"
                del node.input[1:]
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("axis", 1))
                stats["flattens"] += 1
                continue
            new = _reshape_target(in_dims, out_dims)
            if new is None:
                continue
            tensor = numpy_helper.from_array(np.array(new, dtype=np.int64), f"{node.output[0]}__shears_target")
            graph.initializer.append(tensor)
            node.input[1] = tensor.name
            kept = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(kept)
            stats["reshape_targets"] += 1
    for name in sorted(derived):
        if name in inits or name in outputs or name not in values:
            continue
        one, two = values[name]
        if one.shape != two.shape or not np.array_equal(one, two):
            continue
        users = [n for n in consumers.get(name, []) if not set(n.output) <= derived]
        if not users:
            continue  # only other shape arithmetic reads it: folded further down the chain
        tensor = numpy_helper.from_array(one, name)
        graph.initializer.append(tensor)
        inits.add(name)
        for node in graph.node:  # the producer now has one output less to make
            for i, out in enumerate(node.output):
                if out == name:
                    node.output[i] = ""
        stats["shape_constants"] += 1
    _drop_dead_nodes(graph)
    return stats


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    needed = {v.name for v in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o and o in needed for o in node.output):
            keep.append(node)
            needed.update(n for n in node.input if n)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
