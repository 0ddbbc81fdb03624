"""``spline_geometry``: weight-space spline scores ([SPLINE]; ALGORITHMS §3 alternative):
distance of each BN-folded hyperplane from the probe data and smallest angle to another
unit's (:func:`worker.pruning.scoring.spline_geometry_scores`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from worker.pruning.criteria.base import ScoringContext
from worker.pruning.layers import PrunableLayer
from worker.pruning.scoring import spline_geometry_scores


class SplineGeometryImportance:
    name = "spline_geometry"
    needs_probes = True
    global_normalizer = "none"

    def __call__(self, model: nn.Module, layers: Sequence[PrunableLayer], context: ScoringContext):
        if context.probes is None:
            raise ValueError("criterion 'spline_geometry' needs probes")
        return spline_geometry_scores(
            model, layers, context.probes, context.max_positions, context.seed, redundancy=context.redundancy
        )
