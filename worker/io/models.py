"""Model intake: detect the format by content, load safely, and inspect prunability.

Accepted: ONNX (converted with onnx2torch), safetensors weights + a zoo architecture name,
and TorchScript only when the operator allows it (loading TorchScript runs code from the
file). Pickles — raw pickle streams and ``torch.save`` zip archives — are refused without
ever being unpickled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.core import intake
from service.core.intake import Rejected

ACCEPTED_FORMATS = intake.ACCEPTED_MODELS


@dataclass
class LoadedModel:
    """A model ready for the engine: module, the format it came from, per-sample input shape."""

    module: nn.Module
    format: str
    input_shape: tuple[int, ...] | None
    details: dict[str, Any] = field(default_factory=dict)


def load_model(
    path: Path,
    *,
    architecture: str | None = None,
    allow_torchscript: bool = False,
    num_classes: int | None = None,
    width: float = 1.0,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """Load an uploaded model file; raise ``Rejected`` with a code when refused.

    ``input_shape`` (per sample) resolves an ONNX model's symbolic input dimensions; a
    model whose size it cannot know without one is refused with ``input-shape-required``.
    """
    from worker.io import zoo

    path = Path(path)
    kind = intake.check_model_file(path, allow_torchscript)  # the same checks as the API's upload
    if kind == "onnx":
        from worker.io.onnx import convert_model, read_onnx

        proto = read_onnx(path)
        module = convert_model(proto, input_shape)
        details = {
            "opset": _opset(proto),
            "ir_version": proto.ir_version,
            "producer": proto.producer_name or None,
            "io": module.shears_onnx_io.to_json(),
        }
        return LoadedModel(module, "onnx", tuple(module.shears_input_shape), details)
    if kind == "safetensors":
        if not architecture:
            raise Rejected(
                "architecture-required",
                f"a safetensors file holds weights only; name its architecture, one of: {', '.join(sorted(zoo.ZOO))}.",
            )
        module = zoo.load_zoo_model(architecture, path, num_classes=num_classes, width=width)
        in_channels = _stem_in_channels(module)
        return LoadedModel(
            module, "safetensors", zoo.nominal_input_shape(architecture, in_channels), {"architecture": architecture}
        )
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise Rejected("invalid-torchscript", f"torch.jit.load failed ({type(exc).__name__}).") from exc
        return LoadedModel(module, "torchscript", None)
    raise AssertionError(f"intake accepted the model format {kind!r} that no loader reads")


def _opset(proto: Any) -> int | None:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def _stem_in_channels(module: nn.Module) -> int | None:
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(sub.in_channels)
    return None


# ------------------------------------------------------------------------------------
# Inspection
# ------------------------------------------------------------------------------------

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(module: nn.Module) -> list[dict[str, Any]]:
    """Conv/Linear layers with their channel counts, in definition order."""
    layers = []
    for name, sub in module.named_modules():
        if isinstance(sub, _PRUNABLE):
            is_conv = not isinstance(sub, nn.Linear)
            layers.append(
                {
                    "name": name,
                    "type": type(sub).__name__,
                    "in_channels": int(sub.in_channels if is_conv else sub.in_features),
                    "out_channels": int(sub.out_channels if is_conv else sub.out_features),
                    "groups": int(sub.groups) if is_conv else 1,
                    "parameters": int(sum(p.numel() for p in sub.parameters(recurse=False))),
                }
            )
    return layers


def _torch_dtype(elem_type: int) -> torch.dtype:
    import numpy as np
    import onnx

    return torch.from_numpy(np.zeros(1, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem_type))).dtype


def _excluded_sets(module: nn.Module, example: torch.Tensor) -> tuple[list[dict[str, str]], int]:
    """Coupled sets whose channels cannot be removed (with why), and how many sets can be."""
    from worker.pruning.channels import coupled_sets
    from worker.pruning.exclusion import blocked_roots
    from worker.pruning.layers import discover_layers

    layers = discover_layers(module)
    sets = coupled_sets(module, example, layers)
    blocked = blocked_roots(module, example, [s[0] for s in sets])
    excluded = [{"node": root, "reason": reason} for root, reason in blocked.items()]
    return excluded, sum(1 for s in sets if s[0] not in blocked)


def inspect_upload(path: Path, *, architecture: str | None = None, allow_torchscript: bool = False) -> dict[str, Any]:
    """What the upload inspection records about a model file (:func:`inspect_model`).

    An ONNX model whose input has symbolic per-sample dimensions (``[batch, 3, height,
    width]``) cannot be sized without data: its operators are checked now, and the rest of
    the inspection (MACs, prunable sets) waits for a job, whose dataset gives the shape.
    Its record says so (``input_shape`` null, the declared ``io``, a ``note``).
    """
    try:
        loaded = load_model(path, architecture=architecture, allow_torchscript=allow_torchscript)
    except Rejected as error:
        if error.code != "input-shape-required":
            raise
        from worker.io.onnx import check_operators, prepare_for_torch, read_onnx
        from worker.io.onnx.inputs import io_signature, real_inputs

        proto = read_onnx(path)
        dims = [d.dim_value or d.dim_param or None for d in real_inputs(proto)[0].type.tensor_type.shape.dim]
        if len(dims) < 2:
            raise  # no per-sample dims at all: a job's dataset cannot size it either
        check_operators(prepare_for_torch(proto)[0], dry_run=False)  # converters may need the shapes
        return {
            "input_shape": None,
            "io": io_signature(proto).to_json(),
            "channel_prunable": None,
            "note": (
                f"the input has symbolic dimensions {dims}: a job takes them from its dataset's samples "
                "(spec.preprocessing sizes images); MACs and prunable layers are measured then"
            ),
        }
    return inspect_model(loaded.module, loaded.input_shape)


def inspect_model(module: nn.Module, input_shape: tuple[int, ...], *, max_trial_layers: int = 64) -> dict[str, Any]:
    """Parameters, MACs, prunable layers, input shape, and what blocks channel pruning.

    ``input_shape`` is per sample (no batch dimension). Each coupled set of layers is
    tried on a copy (remove one channel, run at batch 2, compare every output's shape:
    :mod:`worker.pruning.exclusion`); sets that fail are listed under ``excluded`` with
    the reason, and pruning leaves them alone. ``blockers`` name what stops channel
    pruning of the whole model: a failing forward pass or dependency graph, or every set
    excluded. ``channel_prunable`` is true when at least one set can be pruned.
    """
    was_training = module.training
    try:
        return _inspect(module.eval(), tuple(input_shape), max_trial_layers)
    finally:
        module.train(was_training)


def _inspect(module: nn.Module, input_shape: tuple[int, ...], max_trial_layers: int) -> dict[str, Any]:
    from worker.pruning.training import count_macs_params

    example = torch.randn(1, *input_shape)
    signature = getattr(module, "shears_onnx_io", None)
    if signature is not None and signature.inputs and signature.inputs[0].elem_type != 1:  # integer inputs (bytes)
        example = torch.randint(0, 256, (1, *input_shape)).to(_torch_dtype(signature.inputs[0].elem_type))
    report: dict[str, Any] = {
        "input_shape": list(input_shape),
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "macs": None,
        "prunable_layers": prunable_layers(module),
        "blockers": [],
        "channel_prunable": False,
    }
    try:
        with torch.no_grad():
            module(example)
    except Exception as exc:
        report["blockers"].append(
            {
                "node": "<forward>",
                "reason": f"a forward pass on input shape {list(input_shape)} fails: {str(exc)[:200]}",
            }
        )
        return report
    try:  # counted as the report's macs.before/after are (Conv/Linear multiply-accumulates)
        macs, _ = count_macs_params(module, example)
        report["macs"] = int(macs)
    except Exception as exc:  # counting is informative only
        report["macs_error"] = str(exc)[:200]
    if isinstance(module, torch.jit.ScriptModule):
        report["blockers"].append({"node": "<torchscript>", "reason": "TorchScript modules cannot be channel-pruned"})
        return report
    try:
        excluded, prunable_sets = _excluded_sets(module, example)
    except Exception as exc:
        report["blockers"].append(
            {"node": "<dependency-graph>", "reason": f"Torch-Pruning cannot trace the model: {str(exc)[:200]}"}
        )
        return report
    report["excluded"] = excluded
    report["prunable_sets"] = prunable_sets
    if not prunable_sets:
        report["blockers"] += excluded or [
            {"node": "<model>", "reason": "no Conv/Linear layer with two or more channels"}
        ]
    report["channel_prunable"] = prunable_sets > 0
    return report
