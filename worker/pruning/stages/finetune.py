"""``finetune``: train the pruned model (masks, if any, stay fixed), with the recovery
callbacks the params ask for and, with ``distill`` > 0, distillation from the dense model
(Hinton et al. 2015). Without labels it learns the dense model's outputs alone, every output
with the loss of its kind (worker.pruning.distill); a labelled model with several outputs (or
outputs that are not logits) distils all of them. Fidelity to the dense model is measured
before the first finetune (the report's ``after_pruning``)."""

from __future__ import annotations

import copy
import math

from service.core.spec import FinetuneParams
from worker.pruning.stages.base import EngineState, StageContext, labels_required
from worker.pruning.training import (
    AutoClip,
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
    def planned_epochs(self, params: FinetuneParams, n_train: int, batch_size: int, next_params: object = None) -> int:
        return finetune_epochs(params, n_train, batch_size)

    def run(self, params: FinetuneParams, context: StageContext, state: EngineState) -> None:
        epochs = finetune_epochs(params, len(context.data.x_train), context.spec.training.batch_size)
        if epochs == 0:
            return
        labelled = context.labelled
        if not labelled and (params.patience is not None or params.restore_best):
            raise labels_required(
                "finetune.patience and finetune.restore_best choose epochs by validation accuracy; this dataset "
                "has no labels. Drop them (the epoch budget is kept)."
            )
        reference = context.reference() if context.has_reference else None
        if reference is not None and not state.finetuned and state.fidelity.get("after_pruning") is None:
            state.fidelity["after_pruning"] = reference.fidelity(
                state.model, context.data, context.spec.training.batch_size, context.device
            )
        config = context.train_config(epochs=epochs, lr=params.lr)
        callbacks: list = []
        if state.masks:
            callbacks.append(FreezeMasks(state.masks))
        if not labelled:  # a pruned detector's first distillation steps can be steep: cut spikes only
            callbacks.append(AutoClip())  # 3 × the median norm; a fixed clip at 5 stalled PP-OCR det
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
        if not labelled:
            loss = reference.distillation(context.device)
        elif params.distill > 0 and reference.single_logits:
            teacher = copy.deepcopy(context.teacher).to(context.device)
            loss = Distillation(teacher, params.distill, params.distill_temperature)
        elif params.distill > 0:
            loss = reference.distillation(context.device, params.distill)
        history = train(state.model, context.data, config, [*callbacks, *context.callbacks()], loss=loss)
        state.finetuned = True
        state.extras.setdefault("finetune", []).append(
            {
                "epochs_trained": len(history),
                "max_epochs": epochs,
                "best_epoch": best.best_epoch if best is not None else None,
            }
        )
