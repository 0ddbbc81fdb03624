"""``probmask``: unstructured sparsity under one global budget ([PROBMASK]; ALGORITHMS §4).
Without labels the weights learn every output of the dense model (worker.pruning.teacher)."""

from __future__ import annotations

from service.core.spec import FinetuneParams, ProbMaskParams
from worker.pruning.probmask import run_probmask
from worker.pruning.stages.base import EngineState, StageContext

GRAD_CLIP = 3.0  # [PROBMASK] clips the global gradient norm at 3


class ProbMaskRunner:
    def planned_epochs(self, params: ProbMaskParams, n_train: int, batch_size: int, next_params: object = None) -> int:
        return params.epochs

    def run(self, params: ProbMaskParams, context: StageContext, state: EngineState) -> None:
        config = context.train_config(
            epochs=params.epochs, lr=params.lr, grad_clip=GRAD_CLIP, forward_passes=params.mask_samples
        )
        distill = {}
        if not context.labelled:  # the weights learn every output of the dense model
            loss = context.reference().distillation(context.device)
            distill = {"loss": loss, "teacher": loss.teacher}  # the teacher also picks a sampled mask
        result = run_probmask(
            state.model,
            context.data,
            config,
            sparsity=params.sparsity,
            score_lr=params.score_lr,
            exclude=params.exclude,
            final_mask=params.final_mask,
            callbacks=context.callbacks(),
            **distill,
        )
        state.masks = result["masks"]
        if not isinstance(context.next_params, FinetuneParams):
            result["warnings"].append(
                "probmask is not followed by a finetune stage: the weights were trained under sampled masks and "
                "the exported model has only had its BatchNorm statistics re-estimated under the final mask. Add "
                "`finetune: {}` after it (on the MNIST-1D CNN at 90 % sparsity and the default 30 epochs the stage "
                'alone validated at 61.5 %, 71.8 % with a 30-epoch finetune; BENCHMARKS.md "ProbMask at short '
                'budgets").'
            )
        # the report's ``probmask`` section: score lr used (scaled when null), steps, undecided scores, warnings
        state.extras["probmask"] = {
            key: result[key] for key in ("sparsity", "score_lr", "steps", "undecided", "warnings")
        }
        state.pruned_accuracy = context.evaluate(state.model)
