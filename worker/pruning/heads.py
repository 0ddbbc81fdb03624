"""Output layers of any model: the prunable layers whose output channels a model output depends
on directly, so removing one of them would change that output's shape.

A classifier has one (the last Linear); a detector has one per head, a segmenter its mask
head, an embedding model its projection. Found on the model's fx graph (onnx2torch builds
one; other modules are traced): a prunable layer is a head when some path from it reaches
the graph's output without passing through another prunable layer. Pure torch.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from worker.pruning.layers import discover_layers

log = logging.getLogger(__name__)


def head_layers(model: nn.Module) -> list[str]:
    """Names of the output layers of ``model`` (empty when it cannot be traced)."""
    if isinstance(model, torch.fx.GraphModule):
        graph = model.graph
    else:
        try:
            graph = torch.fx.symbolic_trace(model).graph
        except Exception as error:  # noqa: BLE001 - untraceable models keep the classifier rule
            log.info("head detection skipped: symbolic_trace failed (%s)", error)
            return []
    prunable = {layer.name for layer in discover_layers(model)}
    heads = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in prunable:
            continue
        seen, frontier = set(), list(node.users)
        while frontier:
            current = frontier.pop()
            if current in seen:
                continue
            seen.add(current)
            if current.op == "output":
                heads.append(str(node.target))
                break
            if current.op == "call_module" and current.target in prunable:
                continue  # this path is re-projected by a prunable layer: channels may change
            frontier.extend(current.users)
    return heads
