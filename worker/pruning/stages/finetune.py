"""``finetune``: train the pruned model (masks, if any, stay fixed), with the recovery
callbacks the params ask for and, with ``distill`` > 0, distillation from the dense model
(Hinton et al. 2015). Without labels it learns the dense model's outputs alone, every output
with the loss of its kind (worker.pruning.distill); a labelled model with several outputs (or
outputs that are not logits) distils all of them. Fidelity to the dense model is measured
before the first finetune (the report's ``after_pruning``)."""

from __future__ import annotations

import copy
import dataclasses
import math

from torch import nn

from service.core.spec import DEFAULT_FINETUNE_LR, REINSERTED_BN_FINETUNE_LR, FinetuneParams
from worker.pruning.stages.base import EngineState, StageContext, labels_required
from worker.pruning.training import (
    AutoClip,
    BatchNormRecalibration,
    Distillation,
    EarlyStopping,
    FreezeMasks,
    RestoreBest,
    Warmup,
    fold_batchnorm,
    has_batchnorm,
    insert_batchnorm,
    train,
)


def finetune_epochs(params: FinetuneParams, n_train: int, batch_size: int) -> int:
    """``epochs``; or the whole epochs that hold ``steps`` optimizer steps; or the default
    budget (:meth:`FinetuneParams.resolved_epochs`: 1500 steps, 10–200 epochs)."""
    return params.resolved_epochs(n_train, batch_size)


def ticket_finetune_epochs(params: FinetuneParams, state: EngineState) -> int | None:
    """The default budget of a finetune after ``early_bird`` ([EB]: the ticket trains for the
    rest of the dense schedule, on the pruned network): ``max_epochs`` − the epochs trained
    before the ticket, at least a quarter of ``max_epochs``. None when a budget was given or no
    early_bird stage ran."""
    ticket = state.early_bird
    if ticket is None or params.epochs is not None or params.steps is not None:
        return None
    schedule = int(ticket["max_epochs"])
    return max(schedule - int(ticket["epochs_trained"]), least_ticket_epochs(schedule))


def least_ticket_epochs(max_epochs: int) -> int:
    """The fewest epochs a finetune after ``early_bird`` trains by default: a quarter of the schedule
    (what the progress plan counts for it: the early_bird stage plans the whole schedule)."""
    return -(-max_epochs // 4)


def finetune_lr(params: FinetuneParams, reinserted_bn: bool, state: EngineState) -> float:
    """``lr``; by default 0.05 after BatchNorm was re-inserted (filters at their initial norm,
    as in training from scratch); after ``early_bird`` the stage's own lr ([EB] retrains the
    ticket from the dense schedule's lr: on shapes32 ResNet-20 tickets 0.1 ended 0.5–1.75 points
    above 0.05, while a BN-folded ONNX ticket, BatchNorm re-inserted, ended 11 points below;
    BENCHMARKS.md); else 0.01."""
    if params.lr is not None:
        return params.lr
    if reinserted_bn:
        return REINSERTED_BN_FINETUNE_LR
    if state.early_bird is not None:
        return float(state.early_bird["lr"])
    return DEFAULT_FINETUNE_LR


def short_finetune(model: nn.Module, context: StageContext, epochs: int, label: str) -> None:
    """A brief finetune of ``model`` in place, inside another stage (a target candidate, a step of
    iterative pruning): ``epochs`` with the recipe of the ``finetune`` stage that follows (its
    lr, distillation from the dense model when kept, BatchNorm handling; the default recipe when
    none follows). Its progress and checkpoints are named ``<stage_id>.<label>``."""
    following = context.next_params if isinstance(context.next_params, FinetuneParams) else None
    recipe = following or FinetuneParams()
    short = FinetuneParams(
        epochs=epochs,
        lr=recipe.lr,
        distill=recipe.distill if context.has_reference else 0.0,
        distill_temperature=recipe.distill_temperature,
        recalibrate_bn=recipe.recalibrate_bn,
        reinsert_bn=recipe.reinsert_bn,
    )
    run_context = dataclasses.replace(context, stage_id=f"{context.stage_id}.{label}", next_params=None)
    FinetuneRunner().run(short, run_context, EngineState(model=model))


class FinetuneRunner:
    def planned_epochs(self, params: FinetuneParams, n_train: int, batch_size: int, next_params: object = None) -> int:
        return finetune_epochs(params, n_train, batch_size)

    def run(self, params: FinetuneParams, context: StageContext, state: EngineState) -> None:
        epochs = ticket_finetune_epochs(params, state)
        if epochs is None:
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
        batch_size = context.spec.training.batch_size
        inserted = 0
        if params.reinsert_bn and not has_batchnorm(state.model):
            state.model.to(context.device)
            inserted = insert_batchnorm(state.model, context.data.x_train, batch_size, seed=context.spec.seed)
        try:
            history, best = self._train(params, context, state, epochs, reference, inserted > 0)
        finally:
            if inserted:
                fold_batchnorm(state.model)
        state.finetuned = True
        state.extras.setdefault("finetune", []).append(
            {
                "epochs_trained": len(history),
                "max_epochs": epochs,
                "best_epoch": best.best_epoch if best is not None else None,
                "reinserted_batchnorms": inserted,
                "lr": finetune_lr(params, inserted > 0, state),
            }
        )

    @staticmethod
    def _train(
        params: FinetuneParams, context: StageContext, state: EngineState, epochs: int, reference, reinserted: bool
    ) -> tuple[list[dict], RestoreBest | None]:
        labelled = context.labelled
        config = context.train_config(epochs=epochs, lr=finetune_lr(params, reinserted, state))
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
        if labelled and params.restore_best is not False:  # null: on with labels
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
        return history, best
