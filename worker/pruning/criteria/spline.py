"""``spline``: data-space spline scores on region codes ([SPLINE]; ALGORITHMS §3, Shears choice):
s_k = min(isolation, redundancy), greedy redundancy by default (:mod:`worker.pruning.scoring`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from worker.pruning.criteria.base import ScoringContext
from worker.pruning.layers import PrunableLayer
from worker.pruning.scoring import streamed_spline_scores


class SplineImportance:
    """Comparable across layers by construction (scores in [0, 0.5])."""

    name = "spline"
    needs_probes = True
    global_normalizer = "none"

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], context: ScoringContext):
        if context.probes is None:
            raise ValueError("criterion 'spline' needs probes")
        # counts accumulated batch by batch: memory independent of the number of probes
        return streamed_spline_scores(
            model, context.probes, layers, context.max_positions, context.seed, context.redundancy
        )
