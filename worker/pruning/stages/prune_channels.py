"""``prune_channels``: score, allocate and physically remove channels ([SPLINE] §3), at a fixed
ratio or at the ratio a ``target`` search chooses (:mod:`worker.pruning.stages.target`)."""

from __future__ import annotations

import torch
from torch import nn

from service.core.spec import PruneChannelsParams
from worker.pruning.channels import PruneResult, prune_channels
from worker.pruning.heads import head_layers
from worker.pruning.stages.base import EngineState, StageContext


def prune_model(
    model: nn.Module,
    params: PruneChannelsParams,
    context: StageContext,
    scores: dict[str, torch.Tensor] | None = None,
) -> PruneResult:
    """Prune ``model`` in place at ``params.ratio``. Output layers (every head,
    worker.pruning.heads) keep their channels, so every output keeps its shape. ``scores``:
    those of an earlier call on a copy of the same model (not scored again)."""
    exclude = list(dict.fromkeys([*params.exclude, *head_layers(model)]))
    return prune_channels(
        model,
        context.data,
        criterion=params.criterion,
        ratio=params.ratio,
        scope=params.scope,
        round_to=params.round_to,
        min_channels=params.min_channels,
        exclude=exclude,
        probes_n=params.probes,
        seed=context.spec.seed,
        scores=scores,
    )


def record_pruning(result: PruneResult, context: StageContext, state: EngineState) -> None:
    """The layer table, the layers left whole and the accuracy right after the surgery."""
    state.layers, state.channels_removed = result.layer_table(), True
    state.excluded.update(result.blocked)
    state.pruned_accuracy = context.evaluate(state.model)


def apply_channel_pruning(params: PruneChannelsParams, context: StageContext, state: EngineState) -> None:
    """Prune ``state.model`` in place as ``params`` say (a fixed ratio) and record it."""
    record_pruning(prune_model(state.model, params, context), context, state)


class PruneChannelsRunner:
    def planned_epochs(
        self, params: PruneChannelsParams, n_train: int, batch_size: int, next_params: object = None
    ) -> int:
        if params.target is None:
            return 0
        from worker.pruning.stages.target import planned_search_epochs

        return planned_search_epochs(params.target, next_params, n_train, batch_size)

    def run(self, params: PruneChannelsParams, context: StageContext, state: EngineState) -> None:
        if params.target is None:
            apply_channel_pruning(params, context, state)
            return
        from worker.pruning.stages.target import run_target_search

        run_target_search(params, context, state)
