"""Compatibility module: the training loop lives in :mod:`worker.pruning.training`.

Kept so that code written before the loop became ``train(model, data, TrainConfig, callbacks)``
keeps working while branches merge; new code imports :mod:`worker.pruning.training`.
:func:`train` here maps the old keyword arguments onto the config and callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from worker.io.data import DataSplits
from worker.pruning.training import (
    BaseCallback,
    Cancelled,
    Distillation,
    TrainConfig,
    TrainHooks,
    TrainState,
    checkpoint_path,
    count_macs_params,
    evaluate,
    resolve_device,
    seed_everything,
)
from worker.pruning.training import train as _train


@dataclass
class ExtraParams:
    """A second parameter set trained next to the weights with its own Adam + cosine."""

    params: list[nn.Parameter]
    lr: float
    weight_decay: float = 0.0
    after_step: Callable[[], None] | None = None


class _Legacy(BaseCallback):
    """The old function-style callbacks as one callback."""

    def __init__(
        self, after_backward, on_epoch_start, on_epoch_end, extra: ExtraParams | None, epochs: int, stateful: list
    ) -> None:
        self._after_backward, self._on_epoch_start, self._on_epoch_end = after_backward, on_epoch_start, on_epoch_end
        self.extra, self.stateful = extra, stateful
        self.optimizer = self.scheduler = None
        if extra is not None:
            self.optimizer = torch.optim.Adam(extra.params, lr=extra.lr, weight_decay=extra.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, epochs))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.extra.params) if self.extra is not None else []

    def on_epoch_start(self, state: TrainState) -> None:
        if self._on_epoch_start is not None:
            self._on_epoch_start(state.epoch, state.model)

    def after_backward(self, state: TrainState) -> None:
        if self._after_backward is not None:
            self._after_backward(state.model)

    def after_step(self, state: TrainState) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            if self.extra.after_step is not None:
                self.extra.after_step()

    def on_epoch_end(self, state: TrainState) -> bool:
        if self.scheduler is not None:
            self.scheduler.step()
        return bool(self._on_epoch_end(state.epoch, state.model)) if self._on_epoch_end is not None else False

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stateful": [s.state_dict() for s in self.stateful]}
        if self.optimizer is not None:
            out["optimizer"], out["scheduler"] = self.optimizer.state_dict(), self.scheduler.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for obj, st in zip(self.stateful, state["stateful"], strict=False):
            obj.load_state_dict(st)
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])


def train(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    stage: str = "train",
    hooks: TrainHooks | None = None,
    after_backward=None,
    on_epoch_end=None,
    extra_params: ExtraParams | None = None,
    on_epoch_start=None,
    grad_clip: float | None = None,
    forward_passes: int = 1,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    distill_temperature: float = 4.0,
    stateful: Any | Sequence[Any] | None = None,
    distill_loss: Any | None = None,
    lr_schedule: str = "cosine",
) -> list[dict]:
    """The old keyword interface of the loop (see the module docstring).

    ``distill_loss`` (a worker.pruning.distill.DistillationLoss) distils every output of
    ``teacher``; a dataset without labels trains on it alone (weight 1)."""
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
        device=device,
        stage=stage,
        grad_clip=grad_clip,
        forward_passes=forward_passes,
        lr_schedule=lr_schedule,
    )
    states = [] if stateful is None else [stateful] if hasattr(stateful, "state_dict") else list(stateful)
    legacy = _Legacy(after_backward, on_epoch_start, on_epoch_end, extra_params, epochs, states)
    loss = (
        Distillation(teacher, distill_weight, distill_temperature)
        if teacher is not None and distill_weight > 0
        else None
    )
    if teacher is not None and distill_loss is not None:
        from worker.pruning.distill import OutputDistillation

        loss = OutputDistillation(teacher, distill_loss, 1.0 if data.y_train is None else distill_weight)
    return _train(model, data, config, [legacy, *(hooks or TrainHooks()).callbacks(stage)], loss=loss)


__all__ = [
    "Cancelled",
    "ExtraParams",
    "TrainHooks",
    "checkpoint_path",
    "count_macs_params",
    "evaluate",
    "resolve_device",
    "seed_everything",
    "train",
]
