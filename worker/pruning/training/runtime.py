"""How a training run talks to the outside world: progress, cancellation, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.pruning.training.callbacks import BaseCallback, TrainState
from worker.pruning.training.checkpoint import Checkpointing


class Cancelled(Exception):
    """Raised by the training loop when the job asks to cancel."""


class Cancellation(BaseCallback):
    """Polls ``should_cancel`` before every optimizer step; raises :class:`Cancelled`."""

    def __init__(self, should_cancel: Callable[[], bool]) -> None:
        self.should_cancel = should_cancel

    def on_step_start(self, state: TrainState) -> None:
        if self.should_cancel():
            raise Cancelled(f"stage {state.config.stage} cancelled at epoch {state.epoch + 1}")


class Progress(BaseCallback):
    """Sends one event per finished epoch: ``stage``, ``epochs`` and the epoch's record."""

    order = 200  # after checkpointing: a reported epoch is a saved epoch

    def __init__(self, on_progress: Callable[[dict], None]) -> None:
        self.on_progress = on_progress

    def on_epoch_end(self, state: TrainState) -> None:
        self.on_progress({"stage": state.config.stage, "epochs": state.config.epochs, **state.record})


@dataclass
class TrainHooks:
    """The job's side of every training run of a pipeline.

    ``on_progress`` receives one dict per finished epoch (keys ``stage``, ``epoch``
    (1-based, epochs done), ``epochs``, ``loss``, ``train_accuracy``, ``val_accuracy``,
    ``lr``). ``should_cancel`` is polled before every optimizer step. With
    ``checkpoint_dir`` each run saves ``<checkpoint_dir>/<stage>.pt`` at every epoch
    boundary and resumes from it (:mod:`worker.pruning.training.checkpoint`).
    """

    on_progress: Callable[[dict], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    checkpoint_dir: Path | None = None

    def callbacks(self, stage: str) -> list[BaseCallback]:
        """The callbacks that implement these hooks for the run named ``stage``."""
        out: list[BaseCallback] = []
        if self.should_cancel is not None:
            out.append(Cancellation(self.should_cancel))
        if self.checkpoint_dir is not None:
            out.append(Checkpointing(self.checkpoint_dir, stage))
        if self.on_progress is not None:
            out.append(Progress(self.on_progress))
        return out


__all__ = ["Cancellation", "Cancelled", "Progress", "TrainHooks"]
