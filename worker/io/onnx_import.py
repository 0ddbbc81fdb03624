"""ONNX → trainable ``torch.fx.GraphModule`` with onnx2torch, made safe and prune-friendly.

``load_onnx`` does, in order:

1. refuse files over protobuf's 2 GiB limit and unparsable or invalid ONNX;
2. validate every external-data reference (relative, no ``..``, resolving — symlinks
   included — inside the upload's directory, offsets inside the file) before reading any;
3. normalise the graph so onnx2torch yields modules that own trainable parameters:
   Constant/Identity-of-weight → initializers, shared initializers untied (one copy per
   consumer), unused BatchNormalization training outputs dropped, ``MatMul(+Add)`` with a
   constant 2-D weight → ``nn.Linear``, and constant Reshape targets after pooling
   rewritten into a batch-agnostic ``Flatten`` (so the graph follows channel pruning);
4. refuse unsupported operators by op type and node name;
5. convert with onnx2torch, whose gaps for opsets 18–21 are filled through its public
   ``add_converter`` registry (see ``_register_converters``).

Nothing from the file is executed: ONNX is data (protobuf), never pickled code.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from worker.io.errors import ModelRejected

PROTOBUF_LIMIT = 2**31 - 1  # bytes one serialized ModelProto can hold
SHEARS_DOMAIN = "shears"  # custom ops of our graph passes (no dot: it prefixes module names)
_STUBBED_OPS = frozenset({"NonMaxSuppression", "RoiAlign"})  # need torchvision, absent here


# ------------------------------------------------------------------------------------
# Importing onnx2torch without torchvision
# ------------------------------------------------------------------------------------


def _unsupported_torchvision_op(name: str):
    def raiser(*args: Any, **kwargs: Any) -> Any:
        raise ModelRejected(
            "unsupported-operator",
            f"unsupported operator {name}: it needs torchvision, which this worker does not "
            "ship. Remove detection post-processing (NonMaxSuppression/RoiAlign) from the "
            "graph before uploading; Shears prunes the backbone/classifier.",
        )

    return raiser


def _import_onnx2torch() -> types.ModuleType:
    """Import onnx2torch; when torchvision is not importable, import it against a stub.

    onnx2torch imports torchvision for two converters only (NonMaxSuppression, RoiAlign).
    The stub lives in ``sys.modules`` just for the import and is removed afterwards, so
    the rest of the process still sees torchvision as absent.
    """
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    if importlib.util.find_spec("torchvision") is not None:
        import onnx2torch

        return onnx2torch
    stub = types.ModuleType("torchvision")
    stub.__doc__ = "Shears stub: torchvision is not installed in this worker."
    ops = types.ModuleType("torchvision.ops")
    ops.nms = _unsupported_torchvision_op("NonMaxSuppression")
    ops.box_convert = _unsupported_torchvision_op("NonMaxSuppression")
    ops.roi_align = _unsupported_torchvision_op("RoiAlign")
    stub.ops = ops
    sys.modules["torchvision"] = stub
    sys.modules["torchvision.ops"] = ops
    try:
        import onnx2torch
    finally:
        for name in ("torchvision.ops", "torchvision"):
            if sys.modules.get(name) in (stub, ops):
                del sys.modules[name]
    return onnx2torch


_import_onnx2torch()
from onnx2torch import convert as _onnx2torch_convert  # noqa: E402
from onnx2torch.node_converters import add_converter, get_converter  # noqa: E402
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes  # noqa: E402
from onnx2torch.onnx_graph import OnnxGraph  # noqa: E402
from onnx2torch.onnx_node import OnnxNode  # noqa: E402
from onnx2torch.utils.common import (  # noqa: E402
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)

# ------------------------------------------------------------------------------------
# Converters onnx2torch lacks (opset 18–21), registered through its public registry
# ------------------------------------------------------------------------------------

_REDUCE_OPS = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSumSquare",
)  # fmt: skip


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
        begin = dict(zip(axis_list, pad_list[:half]))
        end = dict(zip(axis_list, pad_list[half:]))
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
    for op, (old, new_versions) in aliases.items():
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
    _register("Mish", 18, _mish)
    _register("Linear", 1, _linear, domain=SHEARS_DOMAIN)
    _register("Reshape", 1, _reshape_allowzero, domain=SHEARS_DOMAIN)


_register_converters()

# ------------------------------------------------------------------------------------
# Reading and validating the file
# ------------------------------------------------------------------------------------


def _iter_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every TensorProto of a graph: initializers, sparse ones, attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from _iter_tensors(sub)


def _external_location_ok(location: str) -> bool:
    if not location or "\x00" in location:
        return False
    if os.path.isabs(location) or PureWindowsPath(location).is_absolute() or PureWindowsPath(location).drive:
        return False
    if location.startswith(("/", "\\")):
        return False
    parts = PurePosixPath(location.replace("\\", "/")).parts
    return ".." not in parts


def check_external_data(model: onnx.ModelProto, base_dir: Path) -> int:
    """Validate every external-data reference against ``base_dir``; return the bytes referenced.

    Raises ``ModelRejected("external-data-outside-upload")`` when a location is absolute,
    contains ``..``, resolves (symlinks followed) outside ``base_dir``, is not a regular
    file, or when offset/length fall outside that file.
    """
    base = base_dir.resolve()
    total = 0
    for tensor in _iter_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        fix = (
            "External data must be a relative file name next to the model, inside the upload; "
            "re-export with save_as_external_data=True and a plain file name, or as one file."
        )
        if not _external_location_ok(location):
            raise ModelRejected(
                "external-data-outside-upload",
                f"tensor {tensor.name!r} points its external data at {location!r}, an absolute or "
                f"parent-relative path. {fix}",
            )
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise ModelRejected(
                "external-data-outside-upload",
                f"tensor {tensor.name!r} external data {location!r} resolves outside the upload "
                f"directory (a symbolic link?). {fix}",
            )
        if not target.is_file():
            raise ModelRejected(
                "external-data-outside-upload",
                f"tensor {tensor.name!r} external data file {location!r} is missing from the upload. {fix}",
            )
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else target.stat().st_size - offset
        except ValueError as exc:
            raise ModelRejected(
                "invalid-onnx", f"tensor {tensor.name!r} has a non-integer external-data offset/length."
            ) from exc
        if offset < 0 or length < 0 or offset + length > target.stat().st_size:
            raise ModelRejected(
                "invalid-onnx",
                f"tensor {tensor.name!r} external data range [{offset}, {offset + length}) lies outside "
                f"{location!r}; the data file is truncated or does not belong to this model.",
            )
        total += length
    return total


def read_onnx(path: Path) -> onnx.ModelProto:
    """Parse, validate external data, load it, and run ``onnx.checker`` (no conversion)."""
    path = Path(path)
    size = path.stat().st_size
    if size > PROTOBUF_LIMIT:
        raise ModelRejected(
            "model-too-large",
            f"the ONNX file is {size} bytes; protobuf cannot parse one message over 2 GiB. Export "
            "the weights as external data (onnx.save_model(..., save_as_external_data=True)) and "
            "upload the model with its data file in the same directory.",
        )
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelRejected(
            "invalid-onnx", f"the file does not parse as an ONNX model ({type(exc).__name__}); upload a "
            "file written by torch.onnx.export or onnx.save_model."
        ) from exc  # fmt: skip
    if not model.HasField("graph") or model.ir_version < 3:
        raise ModelRejected(
            "invalid-onnx", "the file is not an ONNX model with a graph (IR version 3 or newer); re-export it."
        )
    external = check_external_data(model, path.parent)
    if external:
        if external + size > PROTOBUF_LIMIT:
            raise ModelRejected(
                "model-too-large",
                f"model and external data total {external + size} bytes, above protobuf's 2 GiB limit "
                "that conversion needs; prune or quantize the model elsewhere first, or upload a "
                "zoo architecture with safetensors weights.",
            )
        try:
            onnx.load_external_data_for_model(model, str(path.parent.resolve()))
        except Exception as exc:
            raise ModelRejected("invalid-onnx", f"external data could not be read ({type(exc).__name__}).") from exc
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelRejected(
            "invalid-onnx", f"onnx.checker rejects the model: {first_line}. Re-export it with a current exporter."
        ) from exc
    return model


# ------------------------------------------------------------------------------------
# Graph passes (plain protobuf edits)
# ------------------------------------------------------------------------------------


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _fresh_name(base: str, taken: set[str]) -> str:
    index = 1
    while f"{base}__shears{index}" in taken:
        index += 1
    name = f"{base}__shears{index}"
    taken.add(name)
    return name


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes (weights stored as Constant) → initializers, so converters see them."""
    outputs = {v.name for v in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            tensor = None
            for attribute in node.attribute:
                if attribute.name == "value":
                    tensor = copy.deepcopy(attribute.t)
                elif attribute.name in ("value_float", "value_int"):
                    dtype = np.float32 if attribute.name == "value_float" else np.int64
                    tensor = numpy_helper.from_array(np.array(helper.get_attribute_value(attribute), dtype=dtype))
                elif attribute.name in ("value_floats", "value_ints"):
                    dtype = np.float32 if attribute.name == "value_floats" else np.int64
                    tensor = numpy_helper.from_array(np.array(helper.get_attribute_value(attribute), dtype=dtype))
            if tensor is not None and tensor.data_type != TensorProto.STRING:
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _identity_of_initializers(graph: onnx.GraphProto) -> None:
    """``Identity(initializer)`` (how some exporters tie weights) → its own initializer copy."""
    outputs = {v.name for v in graph.output}
    changed = True
    while changed:
        changed = False
        inits = {t.name: t for t in graph.initializer}
        keep = []
        for node in graph.node:
            if node.op_type == "Identity" and node.input and node.input[0] in inits and node.output[0] not in outputs:
                tensor = copy.deepcopy(inits[node.input[0]])
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                changed = True
                continue
            keep.append(node)
        del graph.node[:]
        graph.node.extend(keep)


def _untie_shared_initializers(graph: onnx.GraphProto) -> int:
    """Give every consumer of a shared initializer its own copy; return the copies made.

    Exporters deduplicate equal or tied tensors into one initializer used by several
    nodes. Each converted module must own its parameters so training and channel
    pruning change one layer only.
    """
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input if name in inits)
    taken = _all_names(graph)
    seen: Counter[str] = Counter()
    copies = 0
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in inits and uses[name] > 1:
                seen[name] += 1
                if seen[name] > 1:
                    tensor = copy.deepcopy(inits[name])
                    tensor.name = _fresh_name(name, taken)
                    graph.initializer.append(tensor)
                    node.input[index] = tensor.name
                    copies += 1
    return copies


def _trim_batchnorm_outputs(graph: onnx.GraphProto) -> None:
    """Drop BatchNormalization's training outputs (running mean/var) when nothing reads them."""
    consumed = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    for node in graph.node:
        if node.op_type == "BatchNormalization" and len(node.output) > 1:
            if not any(name and name in consumed for name in node.output[1:]):
                del node.output[1:]
                kept = [a for a in node.attribute if a.name != "training_mode"]
                del node.attribute[:]
                node.attribute.extend(kept)


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


def _matmul_to_linear(graph: onnx.GraphProto, shapes: dict[str, list[int | str | None]]) -> int:
    """``MatMul(x, W const 2-D) [+ Add(b const 1-D)]`` → Gemm (2-D x) or ``shears::Linear``.

    onnx2torch turns a MatMul with a constant weight into a buffer (not trainable, not
    prunable); Gemm and our Linear op become ``nn.Linear`` with parameters.
    """
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {v.name for v in graph.output}
    removed: set[int] = set()
    count = 0
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        if len(weight.dims) != 2 or weight.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
            continue
        bias_name = None
        out = node.output[0]
        users = consumers.get(out, [])
        if out not in outputs and len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other in inits and list(inits[other].dims) == [weight.dims[1]]:
                bias_name = other
                out = add.output[0]
                removed.add(id(add))
        x_dims = shapes.get(node.input[0])
        inputs = [node.input[0], node.input[1]] + ([bias_name] if bias_name else [])
        if x_dims is not None and len(x_dims) == 2:
            new = helper.make_node("Gemm", inputs, [out], name=node.name or out)
        else:
            new = helper.make_node("Linear", inputs, [out], name=node.name or out, domain=SHEARS_DOMAIN)
        node.CopyFrom(new)
        count += 1
    if removed:
        keep = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(keep)
    return count


def _flatten_gemm_bias(graph: onnx.GraphProto) -> None:
    """Gemm biases of shape [1, out] → [out], so onnx2torch builds an ``nn.Linear``."""
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in inits:
            tensor = inits[node.input[2]]
            if len(tensor.dims) == 2 and tensor.dims[0] == 1:
                new = numpy_helper.from_array(numpy_helper.to_array(tensor).reshape(-1), tensor.name)
                tensor.CopyFrom(new)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    dropped = {t.name for t in graph.initializer if t.name not in used}
    keep = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [v for v in graph.input if v.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


_NOT_FOLDABLE = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
     "Dropout", "If", "Loop", "Scan", "Constant", "Identity"}
)  # fmt: skip
_FOLD_LIMIT = 1 << 26  # elements one folded tensor may have


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types_ = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.value_info)}
    types_.update({t.name: t.data_type for t in graph.initializer})
    return {k: v for k, v in types_.items() if v}


def _fold_constants(model: onnx.ModelProto) -> int:
    """Evaluate nodes whose inputs are all constant into initializers; return how many.

    Exporters (torch's dynamo exporter with ``optimize=False``, tf2onnx, quantizers) leave
    weight arithmetic in the graph — a zero bias built by ``Expand(CastLike(0, x))``, a
    transposed or dequantized weight. Folding it lets converters see plain weights.
    ``CastLike`` becomes ``Cast`` when the target's type is known. Evaluation uses
    ``onnx.reference`` (pure numpy), one node at a time, with a size cap.
    """
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    elem_types = _elem_types(model)
    for node in graph.node:
        if node.op_type == "CastLike" and node.domain in ("", "ai.onnx") and elem_types.get(node.input[1]):
            to = elem_types[node.input[1]]
            node.CopyFrom(helper.make_node("Cast", [node.input[0]], list(node.output), name=node.name, to=to))
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    inits = {t.name: t for t in graph.initializer}
    outputs = {v.name for v in graph.output}
    keep: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NOT_FOLDABLE
            and node.input
            and all((not name) or name in inits for name in node.input)
            and not any(a.HasField("g") or len(a.graphs) for a in node.attribute)
            and not any(o in outputs for o in node.output)
        )
        if foldable:
            try:
                feeds = {name: numpy_helper.to_array(inits[name]) for name in node.input if name}
                mini = helper.make_model(
                    helper.make_graph(
                        [node], "fold",
                        [helper.make_tensor_value_info(n, inits[n].data_type, None) for n in feeds],
                        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o],
                    ),
                    opset_imports=opset,
                )  # fmt: skip
                results = ReferenceEvaluator(mini).run(None, feeds)
                if all(np.asarray(r).size <= _FOLD_LIMIT for r in results):
                    for name, value in zip([o for o in node.output if o], results):
                        tensor = numpy_helper.from_array(np.asarray(value), name)
                        graph.initializer.append(tensor)
                        inits[name] = tensor
                    folded += 1
                    continue
            except Exception:
                pass  # leave the node to the converter
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return folded


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model


def prepare_for_torch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Apply the graph passes to a copy of ``model``; return it and counts of what changed.

    The result carries shape-inferred ``value_info`` (converters such as BatchNormalization
    read ranks from it).
    """
    model = _infer(copy.deepcopy(model))
    graph = model.graph
    _constants_to_initializers(graph)
    _identity_of_initializers(graph)
    stats = {"folded_constants": _fold_constants(model)}
    _trim_batchnorm_outputs(graph)
    _flatten_gemm_bias(graph)
    model = _infer(model)
    graph = model.graph
    shapes = _value_shapes(model)
    stats["linear_from_matmul"] = _matmul_to_linear(graph, shapes)
    stats["untied_initializers"] = _untie_shared_initializers(graph)
    stats["reshape_rewrites"] = _rewrite_constant_reshapes(graph, shapes)
    for node in graph.node:  # what remains with allowzero=1 has a runtime target
        if node.op_type == "Reshape" and node.domain in ("", "ai.onnx") and _attr(node, "allowzero", 0):
            node.domain = SHEARS_DOMAIN
            del node.attribute[:]
    _drop_unused_initializers(graph)
    if any(node.domain == SHEARS_DOMAIN for node in graph.node) and not any(
        o.domain == SHEARS_DOMAIN for o in model.opset_import
    ):
        model.opset_import.append(helper.make_opsetid(SHEARS_DOMAIN, 1))
    return _infer(model), stats


# ------------------------------------------------------------------------------------
# Operator check and conversion
# ------------------------------------------------------------------------------------


def _node_label(node: OnnxNode | onnx.NodeProto) -> str:
    proto = node.proto if isinstance(node, OnnxNode) else node
    op = f"{proto.domain}::{proto.op_type}" if proto.domain not in ("", "ai.onnx") else proto.op_type
    return f"operator {op} at node {proto.name or (proto.output[0] if proto.output else '?')!r}"


def check_operators(model: onnx.ModelProto) -> None:
    """Refuse, by op type and node name, the first node no converter can handle."""
    opsets = {o.domain: o.version for o in model.opset_import}
    torchvision_missing = importlib.util.find_spec("torchvision") is None
    graph = OnnxGraph(model.graph)
    for node in graph.nodes.values():
        domain = node.domain if node.domain != "ai.onnx" else ""
        label = _node_label(node)
        if torchvision_missing and node.operation_type in _STUBBED_OPS:
            raise ModelRejected(
                "unsupported-operator",
                f"unsupported {label}: it needs torchvision, which this worker does not ship. "
                "Remove detection post-processing from the graph before uploading.",
            )
        if domain not in opsets:
            raise ModelRejected("unsupported-operator", f"unsupported {label}: its domain is not imported.")
        try:
            converter = get_converter(operation_type=node.operation_type, version=opsets[domain], domain=domain)
        except NotImplementedError as exc:
            raise ModelRejected(
                "unsupported-operator",
                f"unsupported {label} (opset {opsets[domain]}): Shears cannot convert it to an "
                "editable torch graph. Replace it with standard layers or export the model at "
                "another opset (13–21).",
            ) from exc
        try:
            converter(node, graph)
        except (NotImplementedError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelRejected(
                "unsupported-operator",
                f"unsupported {label} (opset {opsets[domain]}): {str(exc)[:200] or type(exc).__name__}. "
                "Shears supports constant weights and the attribute values torch exporters write.",
            ) from exc


def convert_model(model: onnx.ModelProto) -> fx.GraphModule:
    """Prepare, check operators, and convert a validated ``ModelProto`` (train mode)."""
    prepared, _ = prepare_for_torch(model)
    check_operators(prepared)
    try:
        module = _onnx2torch_convert(prepared)
    except ModelRejected:
        raise
    except Exception as exc:
        raise ModelRejected(
            "unsupported-operator",
            f"conversion to torch failed: {str(exc)[:300] or type(exc).__name__}.",
        ) from exc
    for param in module.parameters():
        param.requires_grad_(True)
    return module.train()


def load_onnx(path: Path) -> fx.GraphModule:
    """Load an uploaded ONNX file as a trainable ``torch.fx.GraphModule`` (see module doc)."""
    return convert_model(read_onnx(Path(path)))


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
