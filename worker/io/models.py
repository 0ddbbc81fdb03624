"""Model intake: detect the format by content, load safely, and inspect prunability.

Accepted: ONNX (converted with onnx2torch), safetensors weights + a zoo architecture name,
and TorchScript only when the operator allows it (loading TorchScript runs code from the
file). Pickles — raw pickle streams and ``torch.save`` zip archives — are refused without
ever being unpickled.
"""

from __future__ import annotations

import copy
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
) -> LoadedModel:
    """Load an uploaded model file; raise ``Rejected`` with a code when refused."""
    from worker.io import zoo

    path = Path(path)
    kind = intake.check_model_file(path, allow_torchscript)  # the same checks as the API's upload
    if kind == "onnx":
        from worker.io.onnx_import import convert_model, onnx_input_shape, read_onnx

        proto = read_onnx(path)
        shape = onnx_input_shape(proto)
        return LoadedModel(convert_model(proto), "onnx", shape, {"opset": _opset(proto), "ir_version": proto.ir_version})
    if kind == "safetensors":
        if not architecture:
            raise Rejected(
                "architecture-required",
                "a safetensors file holds weights only; name its architecture, one of: "
                f"{', '.join(sorted(zoo.ZOO))}.",
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


def _hard_coded_shapes(module: nn.Module) -> list[dict[str, str]]:
    """Reshape modules whose target is a constant tensor (they cannot follow pruning)."""
    blockers = []
    if not isinstance(module, torch.fx.GraphModule):
        return blockers
    for node in module.graph.nodes:
        if node.op != "call_module":
            continue
        target = module.get_submodule(node.target)
        if type(target).__name__ in ("OnnxReshape", "ShearsReshape") and len(node.args) > 1:
            shape_arg = node.args[1]
            if isinstance(shape_arg, torch.fx.Node) and shape_arg.op == "get_attr":
                shape = _get_attr(module, shape_arg.target).reshape(-1).tolist()
                if len(shape) < 2 or all(d in (-1, 0, 1) for d in shape[1:]):
                    continue  # scalars and batch-only targets follow any channel count
                blockers.append(
                    {
                        "node": str(node.target),
                        "reason": f"reshape to the constant shape {shape}: channel pruning "
                        "upstream changes the element count this shape assumes",
                    }
                )
    return blockers


def _get_attr(module: nn.Module, target: str) -> torch.Tensor:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _trial_prune(module: nn.Module, example: torch.Tensor, max_layers: int) -> list[dict[str, str]]:
    """Remove one output channel of each prunable layer (on a copy) and run a forward pass."""
    import torch_pruning as tp

    blockers: list[dict[str, str]] = []
    layers = [(n, m) for n, m in module.named_modules() if isinstance(m, _PRUNABLE)]
    last = layers[-1][0] if layers else None
    for name, _ in layers[:max_layers]:
        if name == last:
            continue  # the classifier's outputs are the classes
        trial = copy.deepcopy(module).eval()
        layer = trial.get_submodule(name)
        channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if channels < 2:
            continue
        fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
        try:
            graph = tp.DependencyGraph().build_dependency(trial, example_inputs=example)
            group = graph.get_pruning_group(layer, fn, idxs=[0])
            if not graph.check_pruning_group(group):
                continue  # would remove every channel of a coupled layer; not a blocker
            group.prune()
            with torch.no_grad():
                trial(torch.cat([example, example], 0))
        except Exception as exc:
            blockers.append(
                {"node": name, "reason": f"removing a channel breaks the graph: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"}
            )
    return blockers


def inspect_model(module: nn.Module, input_shape: tuple[int, ...], *, max_trial_layers: int = 64) -> dict[str, Any]:
    """Parameters, MACs, prunable layers, input shape, and what blocks channel pruning.

    ``input_shape`` is per sample (no batch dimension). Blockers come from building a
    Torch-Pruning dependency graph, from constant reshape targets left in the graph, and
    from removing one channel per layer on a copy and running it (batch 2).
    """
    was_training = module.training
    try:
        return _inspect(module.eval(), tuple(input_shape), max_trial_layers)
    finally:
        module.train(was_training)


def _inspect(module: nn.Module, input_shape: tuple[int, ...], max_trial_layers: int) -> dict[str, Any]:
    import torch_pruning as tp

    example = torch.randn(1, *input_shape)
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
            {"node": "<forward>", "reason": f"a forward pass on input shape {list(input_shape)} fails: {str(exc)[:200]}"}
        )
        return report
    try:
        macs, _ = tp.utils.count_ops_and_params(module, example)
        report["macs"] = int(macs)
    except Exception as exc:  # counting is informative only
        report["macs_error"] = str(exc)[:200]
    if isinstance(module, torch.jit.ScriptModule):
        report["blockers"].append({"node": "<torchscript>", "reason": "TorchScript modules cannot be channel-pruned"})
        return report
    try:
        tp.DependencyGraph().build_dependency(copy.deepcopy(module), example_inputs=example)
    except Exception as exc:
        report["blockers"].append({"node": "<dependency-graph>", "reason": f"Torch-Pruning cannot trace the model: {str(exc)[:200]}"})
        return report
    report["blockers"] += _hard_coded_shapes(module)
    report["blockers"] += _trial_prune(module, example, max_trial_layers)
    report["channel_prunable"] = bool(report["prunable_layers"]) and not report["blockers"]
    return report
