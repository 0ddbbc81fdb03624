"""The model's input/output signature, and symbolic input dimensions made concrete.

Exporters write symbolic dimensions (``[batch, 3, height, width]``, ``p2o.DynamicDimension.1``,
``?``) or pin the batch to 1. Conversion and pruning need one concrete per-sample shape:
it comes from the dataset's samples or the ``input_shape`` a user passes. The batch
dimension is always made symbolic again (``batch``), so constants that pinned it to 1 are
recognised by the reshape pass and the exported model keeps a dynamic batch. The
original signature (names, order, element types, dimensions) is kept so the export can
write it back (:mod:`worker.io.onnx.signature`).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from service.core.intake import Rejected

BATCH = "batch"


@dataclass(frozen=True)
class TensorSignature:
    """One graph input or output: name, ONNX element type, dims (int, symbol name, or None)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...]


@dataclass(frozen=True)
class IOSignature:
    """A graph's inputs and outputs, in order, as the uploaded file declared them."""

    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]

    def to_json(self) -> dict:
        def one(t: TensorSignature) -> dict:
            return {
                "name": t.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "dims": list(t.dims),
            }

        return {"inputs": [one(t) for t in self.inputs], "outputs": [one(t) for t in self.outputs]}


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def io_signature(model: onnx.ModelProto) -> IOSignature:
    """The inputs and outputs ``model`` declares."""

    def sig(value: onnx.ValueInfoProto) -> TensorSignature:
        return TensorSignature(value.name, int(value.type.tensor_type.elem_type), _dims(value))

    return IOSignature(tuple(sig(v) for v in real_inputs(model)), tuple(sig(v) for v in model.graph.output))


def per_sample_shape(model: onnx.ModelProto) -> tuple[int, ...] | None:
    """The single input's per-sample shape when every non-batch dim is static, else ``None``."""
    inputs = real_inputs(model)
    if len(inputs) != 1:
        return None
    dims = _dims(inputs[0])
    if len(dims) < 2 or not all(isinstance(d, int) for d in dims[1:]):
        return None
    return tuple(int(d) for d in dims[1:])  # type: ignore[arg-type]


def resolve_input_shape(model: onnx.ModelProto, sample_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """Make the single input's per-sample dims concrete (in place) and its batch symbolic.

    Static dims must agree with ``sample_shape``; symbolic ones take its values. Raises
    ``Rejected``: ``multiple-inputs`` (Shears feeds one tensor), ``input-shape-required``
    (a symbolic dim and no shape given), ``input-shape-mismatch``. Output shapes and
    ``value_info`` are cleared so shape inference recomputes them for the concrete input.
    Returns the per-sample shape.
    """
    inputs = real_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(repr(v.name) for v in inputs)
        raise Rejected(
            "multiple-inputs",
            f"the model has {len(inputs)} inputs ({names}); Shears prunes models that take one input "
            "tensor. Export the model with its state/auxiliary inputs folded into constants.",
        )
    value = inputs[0]
    dims = _dims(value)
    if len(dims) < 2:
        raise Rejected(
            "input-shape-required",
            f"input {value.name!r} has rank {len(dims)}; Shears needs a batch dimension plus at least "
            "one per-sample dimension.",
        )
    per_sample = dims[1:]
    if sample_shape is None:
        if not all(isinstance(d, int) for d in per_sample):
            raise Rejected(
                "input-shape-required",
                f"input {value.name!r} has symbolic dimensions {list(dims)}: the spatial size cannot be "
                "known from the model. Pass input_shape (per sample, without the batch, e.g. "
                f"{[d if isinstance(d, int) else 224 for d in per_sample]}) with the model or the job, "
                "or a dataset whose samples give it.",
            )
        shape = tuple(int(d) for d in per_sample)  # type: ignore[arg-type]
    else:
        shape = tuple(int(d) for d in sample_shape)
        if len(shape) != len(per_sample) or any(
            isinstance(d, int) and d != s for d, s in zip(per_sample, shape, strict=True)
        ):
            raise Rejected(
                "input-shape-mismatch",
                f"input {value.name!r} takes samples of shape "
                f"{[d if isinstance(d, int) else '?' for d in per_sample]} (declared {list(dims)} with the batch) "
                f"but the dataset's samples have shape {list(shape)}; use a dataset whose samples have the "
                f"model's shape (or the model that was trained on this dataset).",
            )
    tensor_shape = value.type.tensor_type.shape
    del tensor_shape.dim[:]
    tensor_shape.dim.add().dim_param = BATCH
    for size in shape:
        tensor_shape.dim.add().dim_value = size
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return shape
