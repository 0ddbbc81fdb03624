"""The :class:`Callback` protocol of the training loop and the :class:`TrainState` it sees.

The loop (:func:`worker.pruning.training.train`) owns the minibatches, the forward/backward
pass, the weights' SGD step and the learning-rate schedule; everything else plugs in as a
callback, the way ``torch.ao.pruning`` leaves the loop to its caller and a sparsifier only
``step()``s: early-bird detectors, ProbMask, mask freezing, progress, cancellation,
checkpoints, best-on-validation, warm-up, early stopping, BatchNorm recalibration.

Hooks, in the order the loop calls them (every hook is optional; a callback may be any
object with some of these methods, :class:`Callback` gives no-op defaults):

- ``on_train_start(state)``: once, before the first epoch (resume happens here).
- ``on_epoch_start(state)``: before the epoch's first minibatch.
- ``on_step_start(state)``: before every minibatch (cancellation, per-step schedules,
  warm-up); the loop has already set the weights' learning rate of this step.
- ``after_backward(state)``: gradients are in place, before clipping and the step.
- ``after_step(state)``: after the weights' optimizer step.
- ``on_epoch_end(state) -> bool | None``: ``state.record`` holds the epoch's numbers;
  True asks the loop to stop after this epoch. ``state.stop`` tells later callbacks.
- ``on_train_end(state)``: once, after the last epoch (restore the best weights, say).
- ``state_dict()`` / ``load_state_dict(state)``: what must survive a resume (saved in the
  stage's checkpoint with the weights and the optimizer).

``parameters()`` (optional): parameters the callback trains itself with its own optimizer
(ProbMask's scores); the loop leaves them out of the weights' SGD, zeroes their gradients
with the others and includes them in gradient clipping.

Callbacks run in list order, stably sorted by their ``order`` attribute (default 0):
checkpointing (100) and progress (200) run after the ones that decide to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from worker.io.data import DataSplits
    from worker.pruning.training.config import TrainConfig

HOOKS = (
    "on_train_start",
    "on_epoch_start",
    "on_step_start",
    "after_backward",
    "after_step",
    "on_epoch_end",
    "on_train_end",
)


@dataclass
class TrainState:
    """What callbacks see and may change while the loop runs.

    ``epoch`` is 0-based while an epoch runs; ``step`` counts optimizer steps of the whole
    run (0-based, the step about to run in ``on_step_start``); ``total_steps`` is the
    planned number of steps. ``history`` holds one record per finished epoch and
    ``record`` the current epoch's (keys ``epoch`` (1-based), ``loss``,
    ``train_accuracy``, ``val_accuracy``, ``lr``, ``stopped``). Setting ``finished``
    in ``on_train_start`` (a checkpoint of a finished run) skips training.
    """

    model: nn.Module
    data: DataSplits
    config: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    stop: bool = False
    finished: bool = False
    batch: tuple[torch.Tensor, torch.Tensor] | None = None
    loss: torch.Tensor | None = None
    callbacks: list[Any] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def trainable(self) -> list[nn.Parameter]:
        """Every parameter the run trains: the weights and the callbacks' own."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for cb in self.callbacks:
            own = getattr(cb, "parameters", None)
            if callable(own):
                params.extend(own())
        return params


@runtime_checkable
class Callback(Protocol):
    """The hooks a callback may implement (see the module docstring)."""

    def on_train_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_step_start(self, state: TrainState) -> None: ...

    def after_backward(self, state: TrainState) -> None: ...

    def after_step(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> bool | None: ...

    def on_train_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BaseCallback:
    """No-op implementations of every hook: subclass and override what you need."""

    order: int = 0

    def on_train_start(self, state: TrainState) -> None:
        return None

    def on_epoch_start(self, state: TrainState) -> None:
        return None

    def on_step_start(self, state: TrainState) -> None:
        return None

    def after_backward(self, state: TrainState) -> None:
        return None

    def after_step(self, state: TrainState) -> None:
        return None

    def on_epoch_end(self, state: TrainState) -> bool | None:
        return None

    def on_train_end(self, state: TrainState) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


__all__ = ["HOOKS", "BaseCallback", "Callback", "TrainState"]
