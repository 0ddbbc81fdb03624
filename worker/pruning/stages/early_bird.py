"""``early_bird``: dense training until the pruning decision stops changing ([EB], [SPLINE]);
when no ``prune_channels`` stage follows, the ticket is applied as the detector drew it.

A model without BatchNorm (an eval-mode ONNX export folds it into the convolutions) trains
with a fresh BatchNorm inserted after every convolution (worker.pruning.training.reinsert_bn;
γ = 1, β = 0 as in training from scratch, not ``finetune``'s identity), folded back before the
ticket is applied: [EB]'s dense phase runs at lr 0.1, which a deep network without
normalisation does not take (an untrained ResNet-20 export: training loss 0.59 after 8 epochs
with it, 1.37 with identity BatchNorm; 28.5 % validation accuracy at the end of the job
without any; BENCHMARKS.md). The ``bn`` detector needs the
model's own BatchNorm scales and refuses a model without them."""

from __future__ import annotations

import copy

from service.core.spec import EarlyBirdParams, PruneChannelsParams
from worker.pruning.channels import prune_channels
from worker.pruning.early_bird import BNScaleDetector, SplineDetector
from worker.pruning.layers import discover_layers
from worker.pruning.regions import select_probes
from worker.pruning.stages.base import EngineState, StageContext, labels_required
from worker.pruning.stages.prune_channels import apply_channel_pruning
from worker.pruning.training import fold_batchnorm, has_batchnorm, insert_batchnorm, train
from worker.pruning.training.reinsert_bn import reset_inserted_batchnorm


class EarlyBirdRunner:
    def planned_epochs(self, params: EarlyBirdParams, n_train: int, batch_size: int, next_params: object = None) -> int:
        return params.max_epochs

    def run(self, params: EarlyBirdParams, context: StageContext, state: EngineState) -> None:
        if not context.labelled:
            raise labels_required(
                "early_bird trains the dense model from labels; this dataset has none. Drop the early_bird "
                "stage (prune_channels + finetune distil from the dense model)."
            )
        inserted = 0
        if not has_batchnorm(state.model):
            if params.detector == "bn":
                from worker.pipeline import EngineError

                raise EngineError(
                    "batchnorm-required",
                    "the bn early-bird detector ranks the model's BatchNorm scales and this model has none "
                    "(an eval-mode ONNX export folds them into the convolutions); use early_bird.detector: "
                    "spline, which reads region codes, or upload a model with its BatchNorm layers.",
                )
            state.model.to(context.device)
            inserted = insert_batchnorm(
                state.model, context.data.x_train, context.spec.training.batch_size, seed=context.spec.seed
            )
            reset_inserted_batchnorm(state.model)  # dense training from scratch: normalise from the first step
        try:
            if params.detector == "bn":
                detector = BNScaleDetector(ratio=params.ratio, threshold=params.threshold, window=params.window)
            else:
                probes = select_probes(context.data.x_train, 512, seed=context.spec.seed)
                detector = SplineDetector(
                    probes,
                    discover_layers(state.model),
                    threshold=params.threshold,
                    window=params.window,
                    relative_threshold=params.relative_threshold,
                )
            # [EB]: a constant lr until the ticket (the run's length is not known in advance)
            config = context.train_config(epochs=params.max_epochs, lr=params.lr, lr_schedule="constant")
            history = train(state.model, context.data, config, [detector, *context.callbacks()])
        finally:
            if inserted:
                fold_batchnorm(state.model)
        found = detector.found_epoch is not None
        state.early_bird = {
            "detector": params.detector,
            "found": found,
            "epoch": detector.found_epoch,
            "epochs_trained": len(history),
            "max_epochs": params.max_epochs,
            "lr": params.lr,  # the constant lr before the ticket, the following finetune's default
            "threshold": getattr(detector, "effective_threshold", params.threshold),
            "window": params.window,
            "distances": list(detector.distances),
            "distance_epochs": list(detector.distance_epochs),
            # the network the ticket came from: the job's accuracy reference (the upload was its untrained start)
            "dense_accuracy": context.evaluate(state.model),
            "warnings": []
            if found
            else [
                f"early_bird drew no ticket within max_epochs={params.max_epochs} (the distance stayed above "
                f"{getattr(detector, 'effective_threshold', params.threshold):.3g}): the channels were chosen on the "
                "last epoch's weights; raise max_epochs, or the threshold, for a ticket"
            ],
        }
        if context.teacher is not None:  # the job distils or measures fidelity: from here on, against this network
            state.reference = copy.deepcopy(state.model).cpu()
        if not isinstance(context.next_params, PruneChannelsParams):
            apply_ticket(params, context, state)


def apply_ticket(params: EarlyBirdParams, context: StageContext, state: EngineState) -> None:
    """The ticket as the detector drew it: ``bn`` with the one global |γ| threshold it
    converged on ([EB]; raw scales, no per-layer floor beyond one channel), ``spline`` with
    spline scores."""
    if params.detector != "bn":
        apply_channel_pruning(PruneChannelsParams(criterion="spline", ratio=params.ratio), context, state)
        return
    result = prune_channels(
        state.model,
        context.data,
        criterion="bn_scale",
        ratio=params.ratio,
        scope="global",
        normalize="none",
        min_keep_fraction=0.0,
        exclude=PruneChannelsParams().exclude,
        seed=context.spec.seed,
    )
    state.layers, state.channels_removed = result.layer_table(), True
    state.pruned_accuracy = context.evaluate(state.model)
