"""Write an uploaded model's input/output signature back onto its pruned export.

The pruned ONNX keeps the original graph's input and output names, their order and
element types, and names its dynamic axes as the original did (the batch axis is
always dynamic; an axis the original pinned to 1 becomes ``batch``). Axes the original
left symbolic other than the batch (``height``, ``width``) are exported at the size the
model was pruned for; :func:`restore_signature` reports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from worker.io.onnx.inputs import BATCH, IOSignature, TensorSignature


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def _set_dims(value: onnx.ValueInfoProto, original: TensorSignature, notes: list[str]) -> None:
    dims = value.type.tensor_type.shape.dim
    for axis, dim in enumerate(dims):
        want = original.dims[axis] if axis < len(original.dims) else None
        if axis == 0:
            dim.Clear()
            dim.dim_param = want if isinstance(want, str) else BATCH
        elif isinstance(want, str) and dim.HasField("dim_value"):
            notes.append(f"{original.name} axis {axis} ({want}) is fixed at {dim.dim_value}")


def restore_signature(path: Path, signature: IOSignature) -> dict[str, Any]:
    """Rename the exported graph's inputs/outputs to ``signature``'s, in order; fix axis names.

    Returns what was checked: names kept, element types equal, and notes on axes that the
    export fixed. The file is rewritten in place and passes ``onnx.checker``.
    """
    model = onnx.load_model(str(path), load_external_data=False)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != len(signature.inputs) or len(graph.output) != len(signature.outputs):
        return {
            "names_kept": False,
            "error": f"the export has {len(inputs)} inputs and {len(graph.output)} outputs, "
            f"the original {len(signature.inputs)} and {len(signature.outputs)}",
        }
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)} | inits
    wanted = [s.name for s in signature.inputs + signature.outputs]
    current = [v.name for v in inputs + list(graph.output)]
    for index, (old, new) in enumerate(zip(current, wanted, strict=True)):  # free clashing names first
        if old != new and new in taken:
            temp = f"{new}__shears_clash{index}"
            _rename(graph, new, temp)
    for old, new in zip(current, wanted, strict=True):
        _rename(graph, old, new)
    notes: list[str] = []
    dtypes_kept = True
    for value, original in zip(
        [v for v in graph.input if v.name not in inits] + list(graph.output),
        signature.inputs + signature.outputs,
        strict=True,
    ):
        _set_dims(value, original, notes)
        dtypes_kept &= value.type.tensor_type.elem_type == original.elem_type
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return {"names_kept": True, "dtypes_kept": bool(dtypes_kept), "fixed_axes": notes}
