"""``prune_channels``: score, allocate and physically remove channels ([SPLINE] §3)."""

from __future__ import annotations

from service.core.spec import PruneChannelsParams
from worker.pruning.channels import prune_channels
from worker.pruning.heads import head_layers
from worker.pruning.stages.base import EngineState, StageContext


def apply_channel_pruning(params: PruneChannelsParams, context: StageContext, state: EngineState) -> None:
    """Prune ``state.model`` in place as ``params`` say; record the layer table and the
    accuracy right after the surgery. Output layers (every head, worker.pruning.heads) keep
    their channels, so every output keeps its shape."""
    exclude = list(dict.fromkeys([*params.exclude, *head_layers(state.model)]))
    result = prune_channels(
        state.model,
        context.data,
        criterion=params.criterion,
        ratio=params.ratio,
        scope=params.scope,
        round_to=params.round_to,
        min_channels=params.min_channels,
        exclude=exclude,
        probes_n=params.probes,
        seed=context.spec.seed,
    )
    state.layers, state.channels_removed = result.layer_table(), True
    state.excluded.update(result.blocked)
    state.pruned_accuracy = context.evaluate(state.model)


class PruneChannelsRunner:
    def planned_epochs(self, params: PruneChannelsParams, n_train: int, batch_size: int) -> int:
        return 0

    def run(self, params: PruneChannelsParams, context: StageContext, state: EngineState) -> None:
        apply_channel_pruning(params, context, state)
