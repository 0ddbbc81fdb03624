"""Converters onnx2torch lacks, registered through its public ``add_converter`` registry."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from worker.io.onnx.runtime import (
    SHEARS_DOMAIN,
    OnnxGraph,
    OnnxMapping,
    OnnxNode,
    OnnxReduceStaticAxes,
    OnnxToTorchModule,
    OperationConverterResult,
    add_converter,
    get_const_value,
    get_converter,
    onnx_mapping_from_node,
)

_REDUCE_OPS = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
)


class ShearsReduceDynamicAxes(nn.Module, OnnxToTorchModule):
    """Reduce* (opset 18+) whose ``axes`` arrive as a runtime tensor."""

    def __init__(self, operation_type: str, keepdims: int, noop_with_empty_axes: int) -> None:
        super().__init__()
        self.operation_type = operation_type
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        axis_list = [] if axes is None else [int(a) for a in axes.reshape(-1).tolist()]
        if not axis_list and self.noop_with_empty_axes:
            return x
        return OnnxReduceStaticAxes(self.operation_type, axis_list or None, self.keepdims)(x)


class ShearsPad(nn.Module, OnnxToTorchModule):
    """Pad for opsets 18–21: optional ``axes`` input, modes constant/reflect/edge/wrap."""

    _MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in self._MODES:
            raise NotImplementedError(f"Pad mode {mode!r} is not supported")
        self.mode = self._MODES[mode]

    def forward(
        self,
        x: torch.Tensor,
        pads: torch.Tensor,
        constant_value: torch.Tensor | None = None,
        axes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rank = x.dim()
        pad_list = [int(p) for p in pads.reshape(-1).tolist()]
        axis_list = list(range(rank)) if axes is None else [int(a) % rank for a in axes.tolist()]
        half = len(pad_list) // 2
        begin = dict(zip(axis_list, pad_list[:half], strict=False))
        end = dict(zip(axis_list, pad_list[half:], strict=False))
        torch_pads: list[int] = []
        for axis in reversed(range(rank)):  # torch order: last dimension first
            torch_pads += [begin.get(axis, 0), end.get(axis, 0)]
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]  # non-constant modes pad trailing dims only
        value = 0.0 if constant_value is None else float(constant_value)
        if self.mode == "constant":
            return nn.functional.pad(x, torch_pads, mode="constant", value=value)
        return nn.functional.pad(x, torch_pads, mode=self.mode)


class ShearsSplit(nn.Module, OnnxToTorchModule):
    """Split (opset 18+): explicit ``split`` sizes, or ``num_outputs`` ceil-sized chunks."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if split is not None:
            return torch.split(x, [int(s) for s in split.tolist()], dim=self.axis)
        size = math.ceil(x.shape[self.axis] / self.num_outputs)
        return torch.split(x, size, dim=self.axis)


class ShearsCastLike(nn.Module, OnnxToTorchModule):
    """CastLike: cast the first input to the dtype of the second."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x.to(target.dtype)


class ShearsMish(nn.Module, OnnxToTorchModule):
    """Mish (opset 18): x * tanh(softplus(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.mish(x)


def _reduce_v18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    keepdims = node.attributes.get("keepdims", 1)
    noop = node.attributes.get("noop_with_empty_axes", 0)
    inputs = node.input_values
    if len(inputs) < 2 or not inputs[1]:
        module: nn.Module = nn.Identity() if noop else OnnxReduceStaticAxes(node.operation_type, None, keepdims)
        return OperationConverterResult(module, OnnxMapping(inputs=(inputs[0],), outputs=node.output_values))
    try:
        axes = [int(a) for a in torch.as_tensor(get_const_value(inputs[1], graph)).reshape(-1).tolist()]
    except KeyError:
        return OperationConverterResult(
            ShearsReduceDynamicAxes(node.operation_type, keepdims, noop), onnx_mapping_from_node(node)
        )
    if not axes and noop:
        module = nn.Identity()
    else:
        module = OnnxReduceStaticAxes(node.operation_type, axes or None, keepdims)
    return OperationConverterResult(module, OnnxMapping(inputs=(inputs[0],), outputs=node.output_values))


def _pad_v18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(ShearsPad(node.attributes.get("mode", "constant")), onnx_mapping_from_node(node))


def _split_v18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    axis = node.attributes.get("axis", 0)
    num_outputs = node.attributes.get("num_outputs", len(node.output_values))
    return OperationConverterResult(ShearsSplit(axis, num_outputs), onnx_mapping_from_node(node))


def _average_pool_v19(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if any(d != 1 for d in node.attributes.get("dilations", [])):
        raise NotImplementedError("AveragePool with dilations is not supported")
    return get_converter("AveragePool", 11)(node, graph)


def _resize_v18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = node.attributes
    if attrs.get("antialias", 0) or attrs.get("axes") is not None:
        raise NotImplementedError("Resize with antialias or axes is not supported")
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise NotImplementedError("Resize with keep_aspect_ratio_policy is not supported")
    if attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        raise NotImplementedError("Resize with half_pixel_symmetric is not supported")
    return get_converter("Resize", 13)(node, graph)


def _cast_like(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(ShearsCastLike(), onnx_mapping_from_node(node))


def _gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(
        nn.GELU(approximate=node.attributes.get("approximate", "none")), onnx_mapping_from_node(node)
    )


def _mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(ShearsMish(), onnx_mapping_from_node(node))


def _linear(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """``shears::Linear(x, W[in, out], b?)`` from our MatMul(+Add) pass → ``nn.Linear``."""
    weight = graph.initializers[node.input_values[1]].to_torch()
    bias = graph.initializers[node.input_values[2]].to_torch() if len(node.input_values) > 2 else None
    module = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None)
    with torch.no_grad():
        module.weight.copy_(weight.T)
        if bias is not None:
            module.bias.copy_(bias)
    return OperationConverterResult(module, OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))


class ShearsReshape(nn.Module, OnnxToTorchModule):
    """Reshape with ``allowzero=1`` and a runtime target: torch's own reshape semantics."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [int(v) for v in shape.reshape(-1).tolist()])


def _reshape_allowzero(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(ShearsReshape(), onnx_mapping_from_node(node))


class ShearsGlobalMaxPool(nn.Module, OnnxToTorchModule):
    """GlobalMaxPool: the maximum over every spatial axis, kept as size-1 axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x


def _global_max_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(ShearsGlobalMaxPool(), onnx_mapping_from_node(node))


def _batch_norm_v7(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """BatchNormalization opset 6/7: ``spatial=1`` (the default) is opset 9's operator.

    ``spatial=0`` (statistics per activation, not per channel) has no torch layer and is
    refused; ``is_test`` (opset 6) only says inference mode, which torch's eval mode is.
    """
    if node.attributes.get("spatial", 1) != 1:
        raise NotImplementedError("BatchNormalization with spatial=0 (per-activation statistics) is not supported")
    return get_converter("BatchNormalization", 9)(node, graph)


# Opsets 1–8: versions whose semantics for float tensors equal the next version onnx2torch
# has (only attributes that were removed later, such as ``consumed_inputs``, or
# type-support changes differ), so the old node converts with that converter.
_OLD_OPSET_ALIASES = {
    "Flatten": (9, (1,)),
    "Gemm": (9, (7,)),
    "Dropout": (10, (1, 6, 7)),
    "Cast": (9, (1, 6)),
    "Constant": (9, (1,)),
    "MaxPool": (8, (1,)),
    "Relu": (6, (1,)),
    "Tanh": (6, (1,)),
    "Exp": (6, (1,)),
    "Abs": (6, (1,)),
    "Floor": (6, (1,)),
    "Elu": (6, (1,)),
    "Selu": (6, (1,)),
    "Sum": (8, (6,)),
    "Max": (8, (6,)),
    "Min": (8, (6,)),
    "PRelu": (7, (6,)),
    "Clip": (6, (1,)),
}


def _register(op: str, version: int, converter: Any, domain: str = "") -> None:
    try:
        add_converter(operation_type=op, version=version, domain=domain)(converter)
    except ValueError:
        pass  # already registered (a newer onnx2torch has it, or we were imported twice)


def _register_converters() -> None:
    """Fill onnx2torch's gaps for opsets 13–21 through ``add_converter``.

    Versions that only widened type support reuse the previous version's converter; those
    that changed semantics (Reduce* axes as input, Split num_outputs, Pad axes/wrap) get
    new converters.
    """
    aliases = {  # op: (existing version, new versions with identical semantics for floats)
        "Cast": (13, (19, 21)),
        "Constant": (13, (19, 21)),
        "ConstantOfShape": (9, (20, 21)),
        "Equal": (13, (19,)),
        "Flatten": (13, (21,)),
        "GreaterOrEqual": (12, (16,)),
        "LessOrEqual": (12, (16,)),
        "Identity": (16, (19, 21)),
        "IsInf": (10, (20,)),
        "IsNaN": (13, (20,)),
        "Reshape": (14, (19, 21)),
        "Shape": (15, (19, 21)),
        "Transpose": (13, (21,)),
        "Unsqueeze": (13, (21,)),
        "ScatterND": (16, (18,)),
    }
    for op, (old, new_versions) in [*aliases.items(), *_OLD_OPSET_ALIASES.items()]:
        try:
            converter = get_converter(op, old)
        except NotImplementedError:
            continue
        for version in new_versions:
            _register(op, version, converter)
    for op in _REDUCE_OPS:
        _register(op, 18, _reduce_v18)
    for op in ("ReduceMax", "ReduceMin"):
        _register(op, 20, _reduce_v18)
    for version in (18, 19, 21):
        _register("Pad", version, _pad_v18)
    _register("Split", 18, _split_v18)
    _register("AveragePool", 19, _average_pool_v19)
    for version in (18, 19):
        _register("Resize", version, _resize_v18)
    for version in (15, 19, 21):
        _register("CastLike", version, _cast_like)
    _register("Gelu", 20, _gelu)
    _register("GlobalMaxPool", 1, _global_max_pool)
    for version in (6, 7):
        _register("BatchNormalization", version, _batch_norm_v7)
    _register("Mish", 18, _mish)
    _register("Linear", 1, _linear, domain=SHEARS_DOMAIN)
    _register("Reshape", 1, _reshape_allowzero, domain=SHEARS_DOMAIN)


_register_converters()
