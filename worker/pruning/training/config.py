"""What one training run is: :class:`TrainConfig` (data only, no modules or callables)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run of :func:`worker.pruning.training.train`.

    The weights are trained with SGD (``momentum``, ``weight_decay``) and a cosine learning
    rate from ``lr`` to 0 over ``epochs`` (applied per epoch); cross-entropy unless the
    caller passes another loss. ``grad_clip`` clips the global gradient norm of every trained
    parameter (the callbacks' own included); ``forward_passes`` averages the loss of that
    many forward passes per minibatch (ProbMask's mask samples per step). Minibatch order
    comes from a generator seeded by ``(seed, epoch)``. ``stage`` names the run in progress
    events and its checkpoint file. ``lr_schedule`` ``"constant"`` keeps ``lr`` for the whole
    run ([EB]'s dense training until the ticket, whose length is not known in advance).
    """

    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    device: str | torch.device = "cpu"
    stage: str = "train"
    grad_clip: float | None = None
    forward_passes: int = 1
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; expected 'cosine' or 'constant'")
        if self.batch_size < 1 or self.forward_passes < 1:
            raise ValueError("batch_size and forward_passes must be >= 1")

    def with_(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return replace(self, **changes)

    def steps_per_epoch(self, n_train: int) -> int:
        return max(1, math.ceil(n_train / self.batch_size))


def epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """Whole epochs that hold at least ``steps`` optimizer steps on ``n_train`` samples."""
    per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(1, math.ceil(steps / per_epoch))


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """The factor of ``config.lr`` in ``epoch`` (0-based): cosine, or 1 for a constant lr."""
    return 1.0 if config.lr_schedule == "constant" else cosine_factor(epoch, config.epochs)


def cosine_factor(epoch: int, epochs: int) -> float:
    """The cosine schedule's factor at the start of ``epoch`` (0-based) of ``epochs``:
    (1 + cos(π e / E)) / 2, the closed form of ``CosineAnnealingLR(T_max=E, eta_min=0)``."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


__all__ = ["TrainConfig", "cosine_factor", "epochs_for_steps", "lr_factor"]
