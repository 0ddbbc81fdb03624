"""The protocol every channel criterion implements (Torch-Pruning's ``Importance`` shape)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

from worker.pruning.layers import PrunableLayer

Redundancy = Literal["greedy", "pairwise"]


@dataclass(frozen=True)
class ScoringContext:
    """What a criterion may use besides the model: the probe inputs (drawn by the pruner
    when the criterion ``needs_probes``), the job's seed, the spatial subsampling of region
    codes and the spline redundancy mode (:mod:`worker.pruning.scoring`)."""

    probes: torch.Tensor | None = None
    seed: int = 0
    max_positions: int = 64
    redundancy: Redundancy = "greedy"


@runtime_checkable
class Importance(Protocol):
    """Scores the output channels of prunable layers; lower means "prune first".

    ``name`` is the registry name (:data:`service.core.registry.CRITERIA`);
    ``needs_probes``: the pruner draws a probe set from the training data for it;
    ``global_normalizer``: how scores are made comparable across layers in global scope
    (``"mean"``: divided by the layer's mean, Torch-Pruning's "mean" normalizer;
    ``"none"``: comparable by construction). Calling it returns ``{layer name: float32
    tensor (units,)}``; a layer it cannot score (``bn_scale`` without a BN) is left out
    and is then not pruned.
    """

    name: str
    needs_probes: bool
    global_normalizer: Literal["mean", "none"]

    def __call__(
        self, model: nn.Module, layers: Sequence[PrunableLayer], context: ScoringContext
    ) -> dict[str, torch.Tensor]: ...


__all__ = ["Importance", "Redundancy", "ScoringContext"]
