"""What a stage runner is given (:class:`StageContext`), what the stages build together
(:class:`EngineState`), and the :class:`StageRunner` protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import nn

from service.core.spec import JobSpec
from worker.io.data import DataSplits
from worker.pruning.teacher import Teacher
from worker.pruning.training import TrainConfig, TrainHooks, evaluate

P = TypeVar("P", contravariant=True)


@dataclass
class EngineState:
    """The model as the stages leave it, and what they report about it."""

    model: nn.Module
    masks: dict[str, torch.Tensor] | None = None  # unstructured keep masks (ProbMask)
    layers: list[dict] = field(default_factory=list)  # per-layer channels before/after
    channels_removed: bool = False
    excluded: dict[str, str] = field(default_factory=dict)  # layer -> why its channels stay (partial pruning)
    pruned_accuracy: float | None = None  # validation accuracy right after the last pruning
    finetuned: bool = False
    early_bird: dict | None = None  # the early-bird report section
    extras: dict[str, Any] = field(default_factory=dict)  # stage-specific report entries
    # the dense model later stages and the final fidelity compare with when a stage replaced the upload
    # (early_bird: the network at the ticket, the upload being its untrained start); the pipeline takes it
    reference: nn.Module | None = None
    # fidelity to the dense model (worker.pruning.fidelity): right before the first finetune, and final
    fidelity: dict[str, dict | None] = field(default_factory=lambda: {"after_pruning": None, "final": None})


@dataclass
class StageContext:
    """Everything a stage needs besides its params and the state: the data, the job spec
    (seed, training defaults), the device, the job's hooks (progress, cancellation,
    checkpoints), the dense model (a CPU copy, the distillation teacher; None when nothing needs it), the stage's id
    (``<index>-<name>``: names its checkpoints and progress events), the params of the
    stage that follows (None for the last) and ``outputs``: the dense model with its output
    names and kinds (worker.pruning.teacher; None: one logits output, built on demand);
    ``dense_accuracy``: the validation accuracy the acceptance gate compares with (the
    uploaded model's; None: not measured, or no labels)."""

    data: DataSplits
    spec: JobSpec
    device: torch.device
    hooks: TrainHooks
    teacher: nn.Module | None
    stage_id: str
    next_params: Any = None
    outputs: Teacher | None = None
    dense_accuracy: float | None = None  # validation accuracy of the uploaded model (fraction), when measured

    @property
    def labelled(self) -> bool:
        return self.data.labelled

    @property
    def has_reference(self) -> bool:
        """Whether the dense model was kept (the pipeline copies it only to distil, for a
        label-free dataset or for fidelity bounds)."""
        return self.outputs is not None or self.teacher is not None

    def reference(self) -> Teacher:
        """The dense model as teacher and reference of fidelity (``outputs``, else the
        teacher as one logits output)."""
        if self.outputs is None:
            self.outputs = Teacher(self.teacher, ["output_0"], ["logits"])
        return self.outputs

    def train_config(self, *, epochs: int, lr: float, **changes) -> TrainConfig:
        """The job's training defaults (batch size, weight decay, seed) for one run."""
        base = TrainConfig(
            epochs=epochs,
            lr=lr,
            batch_size=self.spec.training.batch_size,
            weight_decay=self.spec.training.weight_decay,
            seed=self.spec.seed,
            device=self.device,
            stage=self.stage_id,
        )
        return base.with_(**changes) if changes else base

    def callbacks(self, stage: str | None = None) -> list:
        """Progress, cancellation and checkpoint callbacks for the run named ``stage``."""
        return self.hooks.callbacks(stage or self.stage_id)

    def evaluate(self, model: nn.Module) -> float | None:
        """Top-1 validation accuracy, or None when the dataset has no labels."""
        if self.data.y_val is None:
            return None
        return evaluate(model, self.data.x_val, self.data.y_val, device=self.device)


def labels_required(message: str) -> Exception:
    """The job-level ``labels-required`` error (worker.pipeline.EngineError) for a stage that
    cannot run on a dataset without labels."""
    from worker.pipeline import EngineError

    return EngineError("labels-required", message)


class StageRunner(Protocol, Generic[P]):
    """Runs one stage type. ``planned_epochs``: the training epochs it will run at most
    (for progress percentages; ``next_params``: the following stage's params, None for the
    last); ``run``: change ``state`` in place."""

    def planned_epochs(self, params: P, n_train: int, batch_size: int, next_params: Any = None) -> int: ...

    def run(self, params: P, context: StageContext, state: EngineState) -> None: ...


__all__ = ["EngineState", "StageContext", "StageRunner", "labels_required"]
