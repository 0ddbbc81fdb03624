"""Stage checkpoints: the one place where a checkpoint file is named, written and read.

A training run with a checkpoint directory saves ``<checkpoint_dir>/<stage>.pt`` at every
epoch boundary (atomically: written to ``.pt.tmp``, then renamed) and, when the file exists
at the start of the run, resumes from it. The file holds the weights, the weights'
optimizer, every callback's ``state_dict()``, the history, the epoch reached, whether the
run finished, and every RNG state: a resumed run ends with the same weights as an
uninterrupted one. Loaded with ``weights_only=True`` (tensors and primitives only: a
checkpoint never executes code). A file of another format, stage or model shape is
ignored with a warning.

Mirroring checkpoints elsewhere (object storage, so that another worker host resumes)
needs only :func:`checkpoint_path`, :func:`save_checkpoint` and :func:`load_checkpoint`:
nothing else in the engine touches checkpoint files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.pruning.training.callbacks import BaseCallback, TrainState
from worker.pruning.training.devices import rng_state, set_rng_state

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2


def checkpoint_path(checkpoint_dir: Path, stage: str) -> Path:
    """Where the checkpoint of ``stage`` lives."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stage)
    return Path(checkpoint_dir) / f"{safe}.pt"


def model_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, stage: str, model: nn.Module) -> dict[str, Any] | None:
    """The payload at ``path`` if it is a checkpoint of ``stage`` for a model of ``model``'s
    shapes, else None."""
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("stage") != stage:
        log.warning("ignoring checkpoint %s: other format or stage", path)
        return None
    if payload.get("shapes") != model_shapes(model):
        log.warning("ignoring checkpoint %s: it belongs to a model of another shape", path)
        return None
    return payload


def _stateful(state: TrainState) -> list[Any]:
    return [
        cb for cb in state.callbacks if callable(getattr(cb, "state_dict", None)) and not isinstance(cb, Checkpointing)
    ]


class Checkpointing(BaseCallback):
    """Save the run at every epoch end; resume from the saved file before training starts."""

    order = 100  # after every callback that may decide to stop

    def __init__(self, checkpoint_dir: Path, stage: str) -> None:
        self.stage = stage
        self.path = checkpoint_path(checkpoint_dir, stage)

    def restore(self, state: TrainState) -> None:
        """Called by the loop before any ``on_train_start``."""
        payload = load_checkpoint(self.path, self.stage, state.model)
        if payload is None:
            return
        state.model.load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
        saved = payload.get("callbacks", [])
        for cb, entry in zip(_stateful(state), saved, strict=False):
            if entry["type"] == type(cb).__name__:
                cb.load_state_dict(entry["state"])
            else:
                log.warning("checkpoint %s: callback %s has no saved state", self.path, type(cb).__name__)
        state.history = list(payload["history"])
        state.start_epoch = int(payload["epoch"])
        state.step = state.start_epoch * state.steps_per_epoch
        state.finished = bool(payload["finished"])
        set_rng_state(payload["rng"])
        log.info("stage %s resumed from %s at epoch %d", self.stage, self.path, state.start_epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "stage": self.stage,
            "epoch": state.epoch + 1,
            "finished": state.stop or state.epoch + 1 == state.config.epochs,
            "shapes": model_shapes(state.model),
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "history": state.history,
            "callbacks": [{"type": type(cb).__name__, "state": cb.state_dict()} for cb in _stateful(state)],
            "rng": rng_state(),
        }
        save_checkpoint(self.path, payload)


__all__ = ["CHECKPOINT_FORMAT", "Checkpointing", "checkpoint_path", "load_checkpoint", "save_checkpoint"]
