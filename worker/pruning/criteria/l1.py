"""``l1``: L1 norm of each output channel's filter (Li et al., *Pruning Filters for
Efficient ConvNets*, ICLR 2017; ALGORITHMS §5 baseline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from worker.pruning.criteria.base import ScoringContext
from worker.pruning.layers import PrunableLayer


@torch.no_grad()
def l1_scores(layers: Sequence[PrunableLayer]) -> dict[str, torch.Tensor]:
    """Σ|w| over each output channel's filter."""
    return {
        layer.name: layer.module.weight.detach().abs().reshape(layer.out_features, -1).sum(1).float().cpu()
        for layer in layers
    }


class L1Importance:
    """Filter L1 norms; raw norms are not comparable across layers, so global scope
    divides them by their layer's mean."""

    name = "l1"
    needs_probes = False
    global_normalizer = "mean"

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], context: ScoringContext):
        return l1_scores(layers)
