"""Training as one loop plus callbacks (the engine's only training loop).

- :class:`TrainConfig` — the run's hyper-parameters (data only);
- :func:`train` — the loop (:mod:`.loop`);
- :class:`Callback` / :class:`BaseCallback` / :class:`TrainState` — the hooks (:mod:`.callbacks`);
- losses: :class:`CrossEntropy`, :class:`Distillation` (:mod:`.losses`);
- runtime callbacks: :class:`TrainHooks` → cancellation, checkpoints, progress
  (:mod:`.runtime`, :mod:`.checkpoint`: the one place checkpoint files are written and read);
- recovery callbacks: :class:`RestoreBest`, :class:`EarlyStopping`, :class:`Warmup`,
  :class:`BatchNormRecalibration`, :class:`AutoClip` (:mod:`.recovery`); :class:`FreezeMasks` (:mod:`.masks`).
"""

from worker.pruning.training.callbacks import BaseCallback, Callback, TrainState
from worker.pruning.training.checkpoint import Checkpointing, checkpoint_path
from worker.pruning.training.config import TrainConfig, epochs_for_steps
from worker.pruning.training.devices import resolve_device, seed_everything
from worker.pruning.training.evaluation import count_macs_params, evaluate
from worker.pruning.training.loop import train
from worker.pruning.training.losses import CrossEntropy, Distillation, Loss
from worker.pruning.training.masks import FreezeMasks
from worker.pruning.training.recovery import (
    AutoClip,
    BatchNormRecalibration,
    EarlyStopping,
    RestoreBest,
    Warmup,
    has_batchnorm,
    recalibrate_batchnorm,
)
from worker.pruning.training.reinsert_bn import fold_batchnorm, insert_batchnorm
from worker.pruning.training.runtime import Cancellation, Cancelled, Progress, TrainHooks

__all__ = [
    "fold_batchnorm",
    "insert_batchnorm",
    "BaseCallback",
    "AutoClip",
    "BatchNormRecalibration",
    "Callback",
    "Cancellation",
    "Cancelled",
    "Checkpointing",
    "CrossEntropy",
    "Distillation",
    "EarlyStopping",
    "FreezeMasks",
    "Loss",
    "Progress",
    "RestoreBest",
    "TrainConfig",
    "TrainHooks",
    "TrainState",
    "Warmup",
    "checkpoint_path",
    "count_macs_params",
    "epochs_for_steps",
    "evaluate",
    "has_batchnorm",
    "recalibrate_batchnorm",
    "resolve_device",
    "seed_everything",
    "train",
]
