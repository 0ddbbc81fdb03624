"""``prune_weights``: global magnitude pruning, unstructured, in one shot (the baseline of
[PROBMASK]; ALGORITHMS §5): the smallest |w| over all masked weights together are zeroed and the
masks kept, so a following ``finetune`` trains the rest with the zeros held."""

from __future__ import annotations

from service.core.spec import PruneWeightsParams
from worker.pruning.baselines import global_magnitude_prune
from worker.pruning.stages.base import EngineState, StageContext


class PruneWeightsRunner:
    def planned_epochs(
        self, params: PruneWeightsParams, n_train: int, batch_size: int, next_params: object = None
    ) -> int:
        return 0

    def run(self, params: PruneWeightsParams, context: StageContext, state: EngineState) -> None:
        state.masks = global_magnitude_prune(state.model, params.sparsity, params.exclude)
        state.pruned_accuracy = context.evaluate(state.model)
