"""``prune_channels``: score, allocate and physically remove channels ([SPLINE] §3), at a fixed
ratio (in one step, or in ``iterations`` steps with short finetunes between them) or at the ratio
a ``target`` search chooses (:mod:`worker.pruning.stages.target`)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from service.core.spec import FinetuneParams, PruneChannelsParams
from worker.pruning.channels import PruneResult, prune_channels
from worker.pruning.heads import head_layers
from worker.pruning.stages.base import EngineState, StageContext


def prune_model(
    model: nn.Module,
    params: PruneChannelsParams,
    context: StageContext,
    scores: dict[str, torch.Tensor] | None = None,
    keep: dict[str, int] | None = None,
) -> PruneResult:
    """Prune ``model`` in place at ``params.ratio``. Output layers (every head,
    worker.pruning.heads) keep their channels, so every output keeps its shape. ``scores``:
    those of an earlier call on a copy of the same model (not scored again); ``keep``: channels
    per layer instead of the ratio's (layerwise)."""
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
        keep=keep,
    )


def record_pruning(result: PruneResult, context: StageContext, state: EngineState) -> None:
    """The layer table, the layers left whole and the accuracy right after the surgery."""
    state.layers, state.channels_removed = result.layer_table(), True
    state.excluded.update(result.blocked)
    state.pruned_accuracy = context.evaluate(state.model)


def apply_channel_pruning(params: PruneChannelsParams, context: StageContext, state: EngineState) -> None:
    """Prune ``state.model`` in place as ``params`` say (a fixed ratio) and record it."""
    record_pruning(prune_model(state.model, params, context), context, state)


def iteration_ratios(ratio: float, iterations: int) -> list[float]:
    """The ratio of each of ``iterations`` steps, relative to the channels the step before left,
    such that after step i the model keeps 1 − ratio·i/k of the original channels (the linear
    schedule of Torch-Pruning's ``iterative_steps``); their product of keeps is 1 − ratio."""
    ratios, kept = [], 1.0
    for step in range(1, iterations + 1):
        keep = 1.0 - ratio * step / iterations
        ratios.append(1.0 - keep / kept)
        kept = keep
    return ratios


def between_epochs(params: PruneChannelsParams, following: object, n_train: int, batch_size: int) -> int:
    """Epochs of the short finetune after each step but the last: 1/k of the following
    ``finetune`` stage's budget (of the default finetune when none follows), at least one."""
    recipe = following if isinstance(following, FinetuneParams) else FinetuneParams()
    full = recipe.resolved_epochs(n_train, batch_size)
    return max(1, math.ceil(full / params.iterations)) if full > 0 else 0


def apply_iterative_pruning(params: PruneChannelsParams, context: StageContext, state: EngineState) -> None:
    """Prune ``state.model`` to ``params.ratio`` in ``params.iterations`` steps, each scored on the
    model as the last short finetune left it, and record the whole (channels before the first
    step, after the last)."""
    from worker.pruning.stages.finetune import short_finetune

    n_train, batch_size = len(context.data.x_train), context.spec.training.batch_size
    epochs = between_epochs(params, context.next_params, n_train, batch_size)
    first: PruneResult | None = None
    result: PruneResult | None = None
    steps = []
    for step, ratio in enumerate(iteration_ratios(params.ratio, params.iterations), start=1):
        keep = None
        if first is not None and params.scope == "layerwise":
            # every layer at the one-shot count of its original width for this step's cumulative
            # ratio: steps of rounding would otherwise leave more channels than one shot
            cumulative = params.ratio * step / params.iterations
            keep = {
                name: width - math.floor(cumulative * width + 1e-9) for name, width in first.channels_before.items()
            }
        elif result is not None:  # global: this step's ratio of what the last step left
            current, original = sum(result.channels_after.values()), sum(first.channels_before.values())
            ratio = max(0.0, 1.0 - (1.0 - params.ratio * step / params.iterations) * original / max(1, current))
        result = prune_model(
            state.model, params.model_copy(update={"ratio": ratio, "iterations": 1}), context, keep=keep
        )
        first = first or result
        point = {
            "step": step,
            "kept_fraction": 1.0 - params.ratio * step / params.iterations,
            "macs": result.macs_after,
            "accuracy_pruned": _percent(context.evaluate(state.model)),
        }
        if step < params.iterations and epochs > 0:
            short_finetune(state.model, context, epochs, f"iteration-{step}")
            point["accuracy_finetuned"] = _percent(context.evaluate(state.model))
        steps.append(point)
    whole = dataclasses.replace(
        result,
        channels_before=first.channels_before,
        params_before=first.params_before,
        macs_before=first.macs_before,
    )
    record_pruning(whole, context, state)
    state.extras["iterative_pruning"] = {"iterations": params.iterations, "epochs_between": epochs, "steps": steps}


def _percent(accuracy: float | None) -> float | None:
    return None if accuracy is None else 100.0 * accuracy


class PruneChannelsRunner:
    def planned_epochs(
        self, params: PruneChannelsParams, n_train: int, batch_size: int, next_params: object = None
    ) -> int:
        if params.target is None:
            if params.iterations == 1:
                return 0
            return (params.iterations - 1) * between_epochs(params, next_params, n_train, batch_size)
        from worker.pruning.stages.target import planned_search_epochs

        return planned_search_epochs(params.target, next_params, n_train, batch_size)

    def run(self, params: PruneChannelsParams, context: StageContext, state: EngineState) -> None:
        if params.target is None and params.iterations > 1:
            apply_iterative_pruning(params, context, state)
            return
        if params.target is None:
            apply_channel_pruning(params, context, state)
            return
        from worker.pruning.stages.target import run_target_search

        run_target_search(params, context, state)
