"""Shapes: values' static/symbolic dims, constant Reshape targets made batch-agnostic, input shapes."""

from __future__ import annotations

import copy
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


def _rewrite_constant_reshapes(
    graph: onnx.GraphProto, shapes: dict[str, list[int | str | None]], pinned_batch: int | None = None
) -> int:
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
        first_is_batch = (
            target[0] in (-1, 0)
            or (isinstance(batch, int) and target[0] == batch)
            or (pinned_batch is not None and isinstance(batch, str) and target[0] == pinned_batch)
        )
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


class Observed(dict):
    """``{value name: dims}`` as measured (``batch`` marks dims that follow the batch), plus
    ``values``: ``{name: (at batch 1, at batch 2)}`` for small integer tensors (shape arithmetic)."""

    values: dict[str, tuple[np.ndarray, np.ndarray]]


def observed_shapes(model: onnx.ModelProto, sample_shape: tuple[int, ...]) -> Observed:
    """Every value's dims as onnxruntime computes them, for the gaps ONNX shape inference leaves.

    Exporters such as paddle2onnx write graphs whose shapes ``onnx.shape_inference`` cannot
    follow (converters then see a BatchNormalization of unknown rank). Running the graph
    twice on zeros, at batch 1 and batch 2, with every value exposed as an output, gives
    the real dims; those that differ between the runs follow the batch and are named
    ``batch``. Returns ``{}`` when onnxruntime cannot run the model (nothing is lost: the
    converters fall back to inference). Only the single input is fed; shape only, values
    are never read.
    """
    try:
        import onnxruntime as ort

        probe = copy.deepcopy(model)
        graph = probe.graph
        declared = {v.name for v in graph.output}
        inits = {t.name for t in graph.initializer}
        for node in graph.node:
            for name in node.output:
                if name and name not in declared and name not in inits:
                    graph.output.append(onnx.ValueInfoProto(name=name))
                    declared.add(name)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(
            next(v for v in graph.input if v.name == feed.name).type.tensor_type.elem_type
        )
        names = [o.name for o in session.get_outputs()]
        runs = [session.run(names, {feed.name: np.zeros((batch, *sample_shape), dtype=dtype)}) for batch in (1, 2)]
    except Exception:
        empty = Observed()
        empty.values = {}
        return empty
    shapes = Observed()
    shapes.values = {}
    for name, one, two in zip(names, *runs, strict=True):
        if not isinstance(one, np.ndarray) or not isinstance(two, np.ndarray) or one.ndim != two.ndim:
            continue
        shapes[name] = [a if a == b else "batch" for a, b in zip(one.shape, two.shape, strict=True)]
        if one.dtype.kind in "iu" and one.size <= 64 and two.size <= 64:
            shapes.values[name] = (one, two)
    return shapes


def fill_value_info(model: onnx.ModelProto, observed: dict[str, list[int | str | None]]) -> int:
    """Add ``value_info`` (with the observed dims) for values that have no shape; return how many."""
    graph = model.graph
    known = {
        v.name
        for v in list(graph.value_info) + list(graph.input) + list(graph.output)
        if v.type.tensor_type.HasField("shape")
    }
    known |= {t.name for t in graph.initializer}
    elem = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)}
    added = 0
    for node in graph.node:
        for name in node.output:
            if name and name not in known and name in observed:
                dims = observed[name]
                info = helper.make_tensor_value_info(name, elem.get(name, onnx.TensorProto.FLOAT), dims)
                kept = [v for v in graph.value_info if v.name != name]
                del graph.value_info[:]
                graph.value_info.extend(kept)
                graph.value_info.append(info)
                known.add(name)
                added += 1
    return added
