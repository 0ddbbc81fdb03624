"""``random``: uniform random scores from the job's seed (ALGORITHMS §5 baseline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from worker.pruning.criteria.base import ScoringContext
from worker.pruning.layers import PrunableLayer


def random_scores(layers: Sequence[PrunableLayer], seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random scores from a fixed seed (the global RNG is not touched)."""
    gen = torch.Generator().manual_seed(seed)
    return {layer.name: torch.rand(layer.out_features, generator=gen) for layer in layers}


class RandomImportance:
    name = "random"
    needs_probes = False
    global_normalizer = "none"

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], context: ScoringContext):
        return random_scores(layers, context.seed)
