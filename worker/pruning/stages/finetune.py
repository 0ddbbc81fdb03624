"""``finetune``: train the pruned model (masks, if any, stay fixed), with the recovery
callbacks the params ask for and, with ``distill`` > 0, distillation from the dense model."""

from __future__ import annotations

import copy
import math

from service.core.spec import FinetuneParams
from worker.pruning.stages.base import EngineState, StageContext
from worker.pruning.training import (
    BatchNormRecalibration,
    Distillation,
    EarlyStopping,
    FreezeMasks,
    RestoreBest,
    Warmup,
    train,
)


def finetune_epochs(params: FinetuneParams, n_train: int, batch_size: int) -> int:
    """``epochs``; or the whole epochs that hold ``steps`` optimizer steps; or the default
    budget (:meth:`FinetuneParams.resolved_epochs`: 1000 steps, 10–100 epochs)."""
    return params.resolved_epochs(n_train, batch_size)


class FinetuneRunner:
    def planned_epochs(self, params: FinetuneParams, n_train: int, batch_size: int) -> int:
        return finetune_epochs(params, n_train, batch_size)

    def run(self, params: FinetuneParams, context: StageContext, state: EngineState) -> None:
        epochs = finetune_epochs(params, len(context.data.x_train), context.spec.training.batch_size)
        if epochs == 0:
            return
        config = context.train_config(epochs=epochs, lr=params.lr)
        callbacks: list = []
        if state.masks:
            callbacks.append(FreezeMasks(state.masks))
        if params.recalibrate_bn:
            callbacks.append(BatchNormRecalibration())
        if params.warmup > 0:
            callbacks.append(
                Warmup(math.ceil(params.warmup * epochs * config.steps_per_epoch(len(context.data.x_train))))
            )
        if params.patience is not None:
            callbacks.append(EarlyStopping(params.patience))
        best = None
        if params.restore_best:
            best = RestoreBest()
            callbacks.append(best)
        loss = None
        if params.distill > 0:
            teacher = copy.deepcopy(context.teacher).to(context.device)
            loss = Distillation(teacher, params.distill, params.distill_temperature)
        history = train(state.model, context.data, config, [*callbacks, *context.callbacks()], loss=loss)
        state.finetuned = True
        state.extras.setdefault("finetune", []).append({
            "epochs_trained": len(history), "max_epochs": epochs,
            "best_epoch": best.best_epoch if best is not None else None,
        })  # fmt: skip
