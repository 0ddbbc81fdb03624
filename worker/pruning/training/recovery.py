"""Callbacks that make finetuning after pruning hold: best-on-validation weights, learning-rate
warm-up, early stopping within the epoch budget, BatchNorm recalibration after surgery,
adaptive gradient clipping."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from worker.pruning.training.callbacks import BaseCallback, TrainState
from worker.pruning.training.evaluation import evaluate

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _val(state: TrainState) -> float:
    value = state.record.get("val_accuracy")
    return -math.inf if value is None or math.isnan(value) else float(value)


class RestoreBest(BaseCallback):
    """Keep a copy of the weights of the epoch with the best validation accuracy and load
    them back when training ends (ties: the earlier epoch). With ``include_start`` the
    weights training starts from are a candidate too (epoch 0), so a run never ends worse
    on validation than it started. Put it after callbacks that change the weights when
    training starts (BatchNorm recalibration)."""

    order = 50  # after the callbacks that decide to stop, before checkpointing

    def __init__(self, include_start: bool = True) -> None:
        self.include_start = include_start
        self.best_accuracy = -math.inf
        self.best_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def on_train_start(self, state: TrainState) -> None:
        if self.include_start and self.best_weights is None and state.start_epoch == 0:
            accuracy = evaluate(state.model, state.data.x_val, state.data.y_val, device=state.device)
            if not math.isnan(accuracy):
                self.best_accuracy, self.best_epoch, self.best_weights = accuracy, 0, self._copy(state.model)

    def on_epoch_end(self, state: TrainState) -> None:
        accuracy = _val(state)
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, state.epoch + 1
            self.best_weights = self._copy(state.model)

    def on_train_end(self, state: TrainState) -> None:
        if self.best_weights is not None:
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"accuracy": self.best_accuracy, "epoch": self.best_epoch, "weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_accuracy, self.best_epoch, self.best_weights = state["accuracy"], state["epoch"], state["weights"]


class EarlyStopping(BaseCallback):
    """Stop when validation accuracy has not improved by more than ``min_delta`` for
    ``patience`` epochs in a row; the run's ``epochs`` stays the budget cap."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, state: TrainState) -> bool:
        accuracy = _val(state)
        if accuracy > self.best + self.min_delta:
            self.best, self.bad_epochs = accuracy, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped_epoch = state.epoch + 1
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs, self.stopped_epoch = state["best"], state["bad_epochs"], state["stopped_epoch"]


class Warmup(BaseCallback):
    """Linear learning-rate warm-up over the first ``steps`` optimizer steps: step t (0-based)
    runs at (t + 1) / steps of the scheduled rate (Goyal et al. 2017)."""

    def __init__(self, steps: int) -> None:
        if steps < 0:
            raise ValueError("warm-up steps must be >= 0")
        self.steps = steps

    def on_step_start(self, state: TrainState) -> None:
        if state.step < self.steps:
            factor = (state.step + 1) / self.steps
            for group in state.optimizer.param_groups:
                group["lr"] *= factor


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BN_TYPES) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, x: torch.Tensor, batch_size: int = 128, max_batches: int = 100, seed: int = 0
) -> int:
    """Reset the running statistics of every BatchNorm and re-estimate them on up to
    ``max_batches`` minibatches of ``x`` (a cumulative average, in train mode, without
    gradients; other layers run as in training). Returns the number of samples used
    (0 when the model has no BatchNorm with running statistics)."""
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]
    if not bns or len(x) == 0:
        return 0
    momenta = [bn.momentum for bn in bns]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    used = 0
    cpu_rng = torch.get_rng_state()
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: every batch counts equally
        model.train()
        for i in range(0, min(len(x), batch_size * max_batches), batch_size):
            xb = x[order[i : i + batch_size]].to(device)
            model(xb)
            used += len(xb)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)
        torch.set_rng_state(cpu_rng)  # dropout draws here must not shift the training run
    return used


class BatchNormRecalibration(BaseCallback):
    """Recalibrate BatchNorm statistics on training batches before the first epoch (after
    surgery, a layer's inputs lost channels and its BN statistics are stale). Skipped on
    resume (the checkpoint holds the recalibrated statistics) and for models without BN."""

    def __init__(self, max_batches: int = 100) -> None:
        self.max_batches = max_batches
        self.samples = 0

    def on_train_start(self, state: TrainState) -> None:
        if state.start_epoch == 0:
            self.samples = recalibrate_batchnorm(
                state.model, state.data.x_train, state.config.batch_size, self.max_batches, state.config.seed
            )


class AutoClip(BaseCallback):
    """Adaptive gradient clipping after AutoClip (Seetharaman et al. 2020, *AutoClip: Adaptive
    Gradient Clipping for Source Separation Networks*): clip the global gradient norm of every
    trained parameter at ``factor`` × the ``percentile`` of the norms seen so far in the run
    (the current one included). A spike — a pruned detector's steep first distillation steps —
    is cut to a few times what is usual for this model and loss, while steady gradients pass
    whatever their scale. The default, 3 × the median, lets the first steps of a run through
    (the median of a short history is the step itself) and cuts a step that jumps past 3× the
    run's typical norm.

    A fixed threshold cannot do both: the norm of a distillation gradient depends on the
    model's size and the loss's normalisation (10–120 on a pruned PP-OCR text detector,
    where a fixed clip at 5 cut every step and stalled it). Runs after the callbacks that
    edit gradients (frozen masks); the history is kept in checkpoints."""

    order = 10  # after FreezeMasks (order 0) zeroes pruned weights' gradients

    def __init__(self, percentile: float = 50.0, factor: float = 3.0) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError("percentile must be in (0, 100]")
        if factor < 1.0:
            raise ValueError("factor must be >= 1")
        self.percentile, self.factor = percentile, factor
        self.history: list[float] = []

    def after_backward(self, state: TrainState) -> None:
        params = [p for p in state.trainable if p.grad is not None]
        if not params:
            return
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        if not math.isfinite(norm):
            return  # nothing to learn from; the optimizer step will show it
        self.history.append(norm)
        typical = float(torch.quantile(torch.tensor(self.history, dtype=torch.float64), self.percentile / 100.0))
        limit = self.factor * typical
        if norm > limit > 0:
            for p in params:
                p.grad.mul_(limit / norm)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(v) for v in state.get("history", [])]


__all__ = [
    "AutoClip",
    "BatchNormRecalibration",
    "EarlyStopping",
    "RestoreBest",
    "Warmup",
    "has_batchnorm",
    "recalibrate_batchnorm",
]
