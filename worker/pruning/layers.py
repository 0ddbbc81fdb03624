"""Discovery of the prunable units of a model ([EB], [SPLINE], [PROBMASK] all act on them).

A prunable layer is every ``Conv1d``/``Conv2d``/``Conv3d``/``Linear`` that the model
runs, in execution order, together with the BatchNorm that directly consumes its output
(the unit's pre-activation is then the BN output, ALGORITHMS §1). Works for plain
``nn.Module`` models (traced with ``torch.fx.symbolic_trace``) and for the
``torch.fx.GraphModule`` that onnx2torch produces; when tracing fails it falls back to
module registration order (a BN directly after a layer with matching width is taken
to follow it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch.fx
from torch import nn

log = logging.getLogger(__name__)

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BN_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)


@dataclass
class PrunableLayer:
    """One prunable layer: its qualified module name, the module, its BN, its width
    (and the BN's qualified name)."""

    name: str
    module: nn.Module
    bn: nn.modules.batchnorm._BatchNorm | None
    out_features: int
    bn_name: str | None = None

    @property
    def is_conv(self) -> bool:
        """True for convolutions (one unit per output channel, many positions)."""
        return isinstance(self.module, nn.modules.conv._ConvNd)


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels  # type: ignore[return-value]


def _bn_matches(bn: nn.Module, module: nn.Module) -> bool:
    return isinstance(bn, BN_TYPES) and bn.num_features == _width(module)  # type: ignore[attr-defined]


def _from_graph(model: nn.Module, graph: torch.fx.Graph) -> list[PrunableLayer]:
    modules = dict(model.named_modules())
    layers: list[PrunableLayer] = []
    seen: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_module" or node.target in seen:
            continue
        module = modules.get(str(node.target))
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        seen.add(str(node.target))
        bn, bn_name = None, None
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            candidate = modules.get(str(users[0].target))
            if candidate is not None and _bn_matches(candidate, module):
                bn, bn_name = candidate, str(users[0].target)
        layers.append(PrunableLayer(str(node.target), module, bn, _width(module), bn_name))  # type: ignore[arg-type]
    return layers


def _from_module_order(model: nn.Module) -> list[PrunableLayer]:
    layers: list[PrunableLayer] = []
    named = [(n, m) for n, m in model.named_modules() if n]
    for i, (name, module) in enumerate(named):
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        bn, bn_name = None, None
        if i + 1 < len(named) and _bn_matches(named[i + 1][1], module):
            bn_name, bn = named[i + 1]
        layers.append(PrunableLayer(name, module, bn, _width(module), bn_name))  # type: ignore[arg-type]
    return layers


def discover_layers(model: nn.Module) -> list[PrunableLayer]:
    """Every prunable layer of ``model`` in execution order, with its following BN.

    Uses the model's own graph when it is a ``GraphModule`` (onnx2torch), else
    ``torch.fx.symbolic_trace``; falls back to module registration order when tracing
    fails (dynamic control flow).
    """
    graph: torch.fx.Graph | None = None
    if isinstance(model, torch.fx.GraphModule):
        graph = model.graph
    else:
        try:
            graph = torch.fx.symbolic_trace(model).graph
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "fall back"
            log.info("symbolic_trace failed (%s); using module order", exc)
    if graph is not None:
        layers = _from_graph(model, graph)
        if layers:
            return layers
    return _from_module_order(model)


def resolve_excludes(model: nn.Module, names: Iterable[str], layers: list[PrunableLayer] | None = None) -> set[str]:
    """Layer names to leave alone: literal prunable-layer names plus ``first``/``last``.

    ``first`` is the first prunable layer executed, ``last`` the last one (the
    classifier). Unknown names raise ``ValueError`` listing the prunable layers.
    """
    layers = layers if layers is not None else discover_layers(model)
    known = [layer.name for layer in layers]
    out: set[str] = set()
    for name in names:
        if name == "first" and known:
            out.add(known[0])
        elif name == "last" and known:
            out.add(known[-1])
        elif name in known:
            out.add(name)
        else:
            raise ValueError(f"unknown layer {name!r} in exclude; prunable layers: {known}")
    return out


def classifier_name(layers: list[PrunableLayer]) -> str | None:
    """Name of the final classifier (the last prunable layer), never channel-pruned."""
    return layers[-1].name if layers else None


__all__ = [
    "BN_TYPES",
    "PRUNABLE_TYPES",
    "PrunableLayer",
    "classifier_name",
    "discover_layers",
    "resolve_excludes",
]
