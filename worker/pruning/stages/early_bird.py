"""``early_bird``: dense training until the pruning decision stops changing ([EB], [SPLINE]);
when no ``prune_channels`` stage follows, the ticket is drawn with the detector's criterion."""

from __future__ import annotations

from service.core.spec import EarlyBirdParams, PruneChannelsParams
from worker.pruning.early_bird import BNScaleDetector, SplineDetector
from worker.pruning.layers import discover_layers
from worker.pruning.regions import select_probes
from worker.pruning.stages.base import EngineState, StageContext, labels_required
from worker.pruning.stages.prune_channels import apply_channel_pruning
from worker.pruning.training import train


class EarlyBirdRunner:
    def planned_epochs(self, params: EarlyBirdParams, n_train: int, batch_size: int) -> int:
        return params.max_epochs

    def run(self, params: EarlyBirdParams, context: StageContext, state: EngineState) -> None:
        if not context.labelled:
            raise labels_required(
                "early_bird trains the dense model from labels; this dataset has none. Drop the early_bird "
                "stage (prune_channels + finetune distil from the dense model)."
            )
        if params.detector == "bn":
            detector = BNScaleDetector(ratio=params.ratio, threshold=params.threshold, window=params.window)
        else:
            probes = select_probes(context.data.x_train, 512, seed=context.spec.seed)
            detector = SplineDetector(
                probes, discover_layers(state.model), threshold=params.threshold, window=params.window
            )
        config = context.train_config(epochs=params.max_epochs, lr=params.lr)
        history = train(state.model, context.data, config, [detector, *context.callbacks()])
        state.early_bird = {
            "detector": params.detector, "found": detector.found_epoch is not None, "epoch": detector.found_epoch,
            "epochs_trained": len(history), "max_epochs": params.max_epochs, "threshold": params.threshold,
            "distances": list(detector.distances), "distance_epochs": list(detector.distance_epochs),
        }  # fmt: skip
        if not isinstance(context.next_params, PruneChannelsParams):
            criterion = "spline" if params.detector == "spline" else "bn_scale"
            apply_channel_pruning(PruneChannelsParams(criterion=criterion, ratio=params.ratio), context, state)
