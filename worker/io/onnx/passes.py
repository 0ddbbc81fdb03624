"""Graph passes (plain protobuf edits) that make onnx2torch yield trainable, prunable modules."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from worker.io.onnx.runtime import SHEARS_DOMAIN


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
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
        "If",
        "Loop",
        "Scan",
        "Constant",
        "Identity",
    }
)
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
                        [node],
                        "fold",
                        [helper.make_tensor_value_info(n, inits[n].data_type, None) for n in feeds],
                        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o],
                    ),
                    opset_imports=opset,
                )
                results = ReferenceEvaluator(mini).run(None, feeds)
                if all(np.asarray(r).size <= _FOLD_LIMIT for r in results):
                    for name, value in zip([o for o in node.output if o], results, strict=False):
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
