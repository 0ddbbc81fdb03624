"""Prepare, check operators, and convert a validated ``ModelProto`` to a ``torch.fx.GraphModule``."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import onnx
from onnx import helper
from torch import fx

import worker.io.onnx.converters  # noqa: F401  (registers our converters)
from service.core.intake import Rejected
from worker.io.onnx.channel_constants import rewrite_channel_constants
from worker.io.onnx.inputs import io_signature, real_inputs, resolve_input_shape
from worker.io.onnx.passes import (
    _attr,
    _constants_to_initializers,
    _drop_unused_initializers,
    _flatten_gemm_bias,
    _fold_constants,
    _identity_of_initializers,
    _infer,
    _matmul_to_linear,
    _trim_batchnorm_outputs,
    _untie_shared_initializers,
)
from worker.io.onnx.reading import read_onnx
from worker.io.onnx.runtime import (
    _STUBBED_OPS,
    SHEARS_DOMAIN,
    OnnxGraph,
    OnnxNode,
    _onnx2torch_convert,
    get_converter,
)
from worker.io.onnx.shape_folding import fold_shape_computations
from worker.io.onnx.shapes import _rewrite_constant_reshapes, _value_shapes, fill_value_info, observed_shapes
from worker.io.onnx.split_pieces import separate_split_pieces


def prepare_for_torch(
    model: onnx.ModelProto,
    pinned_batch: int | None = None,
    observed: dict[str, list[int | str | None]] | None = None,
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Apply the graph passes to a copy of ``model``; return it and counts of what changed.

    The result carries shape-inferred ``value_info`` (converters such as BatchNormalization
    read ranks from it). ``pinned_batch`` is the batch size the uploaded file fixed (1,
    typically) before :func:`resolve_input_shape` made it symbolic: constant Reshape
    targets that start with it are read as the batch. ``observed`` are dims measured by
    :func:`observed_shapes`; they fill what shape inference leaves unknown.
    """
    observed = observed or {}
    model = _infer(copy.deepcopy(model))
    graph = model.graph
    _constants_to_initializers(graph)
    _identity_of_initializers(graph)
    stats = {"folded_constants": _fold_constants(model)}
    if observed:
        stats.update(fold_shape_computations(graph, observed))
    _trim_batchnorm_outputs(graph)
    _flatten_gemm_bias(graph)
    model = _infer(model)
    graph = model.graph
    shapes = {**observed, **{k: v for k, v in _value_shapes(model).items() if v and None not in v}}
    stats["linear_from_matmul"] = _matmul_to_linear(graph, shapes)
    stats["untied_initializers"] = _untie_shared_initializers(graph)
    stats["reshape_rewrites"] = _rewrite_constant_reshapes(graph, shapes, pinned_batch)
    stats["channel_constants"] = rewrite_channel_constants(graph, shapes)
    for node in graph.node:  # what remains with allowzero=1 has a runtime target
        if node.op_type == "Reshape" and node.domain in ("", "ai.onnx") and _attr(node, "allowzero", 0):
            node.domain = SHEARS_DOMAIN
            del node.attribute[:]
    _drop_unused_initializers(graph)
    if any(node.domain == SHEARS_DOMAIN for node in graph.node) and not any(
        o.domain == SHEARS_DOMAIN for o in model.opset_import
    ):
        model.opset_import.append(helper.make_opsetid(SHEARS_DOMAIN, 1))
    model = _infer(model)
    stats["observed_shapes"] = fill_value_info(model, observed)
    return model, stats


# ------------------------------------------------------------------------------------
# Operator check and conversion
# ------------------------------------------------------------------------------------


def _node_label(node: OnnxNode | onnx.NodeProto) -> str:
    proto = node.proto if isinstance(node, OnnxNode) else node
    op = f"{proto.domain}::{proto.op_type}" if proto.domain not in ("", "ai.onnx") else proto.op_type
    return f"operator {op} at node {proto.name or (proto.output[0] if proto.output else '?')!r}"


def check_operators(model: onnx.ModelProto, *, dry_run: bool = True) -> None:
    """Refuse, by op type and node name, the first node no converter can handle.

    ``dry_run`` also builds each node's converter, which needs the attribute values and, for
    some operators (BatchNormalization's rank), inferred shapes; without concrete input dims
    only the operator types are checked."""
    opsets = {o.domain: o.version for o in model.opset_import}
    torchvision_missing = importlib.util.find_spec("torchvision") is None
    graph = OnnxGraph(model.graph)
    for node in graph.nodes.values():
        domain = node.domain if node.domain != "ai.onnx" else ""
        label = _node_label(node)
        if torchvision_missing and node.operation_type in _STUBBED_OPS:
            raise Rejected(
                "unsupported-operator",
                f"unsupported {label}: it needs torchvision, which this worker does not ship. "
                "Remove detection post-processing from the graph before uploading.",
            )
        if domain not in opsets:
            raise Rejected("unsupported-operator", f"unsupported {label}: its domain is not imported.")
        try:
            converter = get_converter(operation_type=node.operation_type, version=opsets[domain], domain=domain)
        except NotImplementedError as exc:
            raise Rejected(
                "unsupported-operator",
                f"unsupported {label} (opset {opsets[domain]}): Shears cannot convert it to an "
                "editable torch graph. Replace it with standard layers or export the model at "
                "another opset (13–21).",
            ) from exc
        if not dry_run:
            continue
        try:
            converter(node, graph)
        except (NotImplementedError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise Rejected(
                "unsupported-operator",
                f"unsupported {label} (opset {opsets[domain]}): {str(exc)[:200] or type(exc).__name__}. "
                "Shears supports constant weights and the attribute values torch exporters write.",
            ) from exc


def convert_model(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """Prepare, check operators, and convert a validated ``ModelProto`` (train mode).

    The single input's symbolic dims are made concrete from ``input_shape`` (per sample)
    or refused with ``input-shape-required`` (:func:`resolve_input_shape`). The module
    carries the file's original signature as ``shears_onnx_io`` (an
    :class:`~worker.io.onnx.inputs.IOSignature`) and the resolved per-sample shape as
    ``shears_input_shape``, so the export can restore names, order, dtypes and axes.
    """
    signature = io_signature(model)
    model = copy.deepcopy(model)
    first = real_inputs(model)[0].type.tensor_type.shape.dim if real_inputs(model) else []
    pinned = (
        int(first[0].dim_value) if len(first) and first[0].HasField("dim_value") and first[0].dim_value > 0 else None
    )
    if len(real_inputs(model)) != 1:  # name an unsupported operator first: it is the harder blocker
        check_operators(prepare_for_torch(model)[0])
    shape = resolve_input_shape(model, input_shape)
    inits = {t.name for t in model.graph.initializer}
    kept_inputs = [v for v in model.graph.input if v.name not in inits]  # weights listed as inputs (IR < 4)
    del model.graph.input[:]
    model.graph.input.extend(kept_inputs)
    prepared, _ = prepare_for_torch(model, pinned_batch=pinned, observed=observed_shapes(model, shape))
    check_operators(prepared)
    try:
        module = _onnx2torch_convert(prepared)
    except Rejected:
        raise
    except Exception as exc:
        raise Rejected(
            "unsupported-operator",
            f"conversion to torch failed: {str(exc)[:300] or type(exc).__name__}.",
        ) from exc
    separate_split_pieces(module)  # Torch-Pruning needs one consumer per Split piece (YOLOv8 C2f)
    for param in module.parameters():
        param.requires_grad_(True)
    module.shears_onnx_io = signature
    module.shears_input_shape = shape
    return module.train()


def load_onnx(path: Path, input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """Load an uploaded ONNX file as a trainable ``torch.fx.GraphModule`` (see module doc)."""
    return convert_model(read_onnx(Path(path)), input_shape)
