"""``bn_scale``: |γ| of the BatchNorm after each layer (network slimming, Liu et al. 2017;
[EB]'s criterion)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from worker.pruning.criteria.base import ScoringContext
from worker.pruning.layers import PrunableLayer


@torch.no_grad()
def bn_scale_scores(layers: Sequence[PrunableLayer]) -> dict[str, torch.Tensor]:
    """|γ| per channel; layers without a BN (or with a non-affine BN) get no score."""
    return {
        layer.name: layer.bn.weight.detach().abs().float().cpu()
        for layer in layers
        if layer.bn is not None and layer.bn.weight is not None
    }


class BNScaleImportance:
    """BN scale factors; **Shears choice**: layers without a BN are left untouched
    (network slimming prunes through BN scales only)."""

    name = "bn_scale"
    needs_probes = False
    global_normalizer = "none"

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], context: ScoringContext):
        return bn_scale_scores(layers)
