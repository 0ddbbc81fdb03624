"""Training, evaluation and cost counting shared by every engine stage.

One loop serves dense training, early-bird search ([EB], [SPLINE]), ProbMask
([PROBMASK]) and finetuning: SGD with momentum + cosine learning rate, cross-entropy.
Stages plug in through small callbacks (``after_backward``, ``on_epoch_start``,
``on_epoch_end``, ``extra_params``) instead of copies of the loop, so progress,
cancellation and checkpoint/resume behave the same everywhere.

Pure torch: no settings, queues or storage imports.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.io.data import DataSplits

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class Cancelled(Exception):
    """Raised by the training loop when ``TrainHooks.should_cancel`` answers True."""


class Stateful(Protocol):
    """Anything whose state must survive a resume (early-bird detectors, say)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainHooks:
    """How a stage talks to the outside world while it trains.

    ``on_progress`` receives one dict per finished epoch (keys ``stage``, ``epoch``
    (1-based, epochs done), ``epochs``, ``loss``, ``train_accuracy``, ``val_accuracy``,
    ``lr``). ``should_cancel`` is polled before every optimizer step; when it answers
    True the loop raises :class:`Cancelled`. With ``checkpoint_dir`` the loop saves
    ``<checkpoint_dir>/<stage>.pt`` at every epoch boundary and resumes from it.
    """

    on_progress: Callable[[dict], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    checkpoint_dir: Path | None = None


@dataclass
class ExtraParams:
    """A second parameter set trained next to the weights with its own Adam optimizer.

    Used by ProbMask ([PROBMASK] §4: scores with Adam, no weight decay, cosine schedule);
    ``after_step`` runs after every optimizer step (the budget projection).
    """

    params: list[nn.Parameter]
    lr: float
    weight_decay: float = 0.0
    after_step: Callable[[], None] | None = None


# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and, lazily, CUDA); return a CPU generator.

    Also asks cuDNN for deterministic kernels. Never initialises CUDA itself.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # queues the CUDA seeding; does not initialise CUDA
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def resolve_device(requested: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; other strings are checked and returned."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    return device


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in [0, 1] (eval mode, restored after)."""
    if len(x) == 0:
        return float("nan")
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(dev)
            yb = y[i : i + batch_size].to(dev)
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / len(x)


@torch.no_grad()
def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """(multiply-accumulates per sample of Conv/Linear layers, parameter count).

    MACs: a conv output element costs ``in_channels / groups * prod(kernel)``, a linear
    output element ``in_features``. ``example_input`` has a batch dimension; the count
    is divided by the batch size. Parameters: every parameter element of the model.
    """
    macs = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.modules.conv._ConvNd):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
        else:
            per_out = module.in_features
        macs += output.numel() * per_out

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        model(example_input.to(dev))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return macs // max(1, int(example_input.shape[0])), params


# --------------------------------------------------------------------------- RNG state


def _rng_state() -> dict[str, Any]:
    """All RNG states as tensors / primitives (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((
        npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
        npst["has_gauss"], npst["cached"],
    ))  # fmt: skip
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- checkpoints


def checkpoint_path(checkpoint_dir: Path, stage: str) -> Path:
    """Where the checkpoint of ``stage`` lives."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stage)
    return Path(checkpoint_dir) / f"{safe}.pt"


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves half a checkpoint


def _load_checkpoint(path: Path, stage: str, model: nn.Module) -> dict[str, Any] | None:
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("stage") != stage:
        log.warning("ignoring checkpoint %s: other format or stage", path)
        return None
    if payload.get("shapes") != _shapes(model):
        log.warning("ignoring checkpoint %s: it belongs to a model of another shape", path)
        return None
    return payload


# --------------------------------------------------------------------------- training


def _stateful_list(stateful: Stateful | Sequence[Stateful] | None) -> list[Stateful]:
    if stateful is None:
        return []
    if hasattr(stateful, "state_dict"):
        return [stateful]  # type: ignore[list-item]
    return list(stateful)  # type: ignore[arg-type]


def _distillation(logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s knowledge-distillation loss: T² · KL(teacher ‖ student) at temperature T."""
    student = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(student, teacher_log_probs, log_target=True, reduction="batchmean") * temperature**2


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
    after_backward: Callable[[nn.Module], None] | None = None,
    on_epoch_end: Callable[[int, nn.Module], bool] | None = None,
    extra_params: ExtraParams | None = None,
    on_epoch_start: Callable[[int, nn.Module], None] | None = None,
    grad_clip: float | None = None,
    forward_passes: int = 1,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    distill_temperature: float = 4.0,
    stateful: Stateful | Sequence[Stateful] | None = None,
    distill_loss: Callable[[Any, Any], torch.Tensor] | None = None,
) -> list[dict]:
    """Train ``model`` in place with SGD (momentum, weight decay) + per-epoch cosine LR.

    Callbacks (epochs are numbered from 0 when passed to callbacks):
    - ``after_backward(model)``: after ``loss.backward()``, before clipping and the step
      ([EB]'s L1 subgradient on BN scales; masking gradients for fixed-mask finetuning).
    - ``on_epoch_start(epoch, model)``: schedules that depend on the epoch (ProbMask τ, K).
    - ``on_epoch_end(epoch, model) -> bool``: True stops training (early-bird found).
    - ``extra_params``: a parameter set trained with Adam + cosine (ProbMask scores);
      these are removed from the SGD set.
    - ``grad_clip``: clip the global gradient norm of all trained parameters.
    - ``forward_passes``: average the loss of that many forward passes per minibatch
      (ProbMask's mask samples per step).
    - ``stateful``: objects whose ``state_dict`` is saved in checkpoints and restored on
      resume (early-bird detectors).
    - ``distill_loss(student_outputs, teacher_outputs)``: distillation over every output
      (worker.pruning.distill.DistillationLoss) instead of the KL on a single logits output.
      A dataset without labels (``data.y_train is None``) trains on it alone and needs
      ``teacher``; its records have ``train_accuracy``/``val_accuracy`` None.

    Deterministic on CPU for a fixed seed: minibatch order comes from a generator seeded
    by ``(seed, epoch)`` and the global RNG state is part of the checkpoint, so a resumed
    run ends with the same weights as an uninterrupted one.

    Returns one dict per epoch: ``epoch`` (1-based), ``loss``, ``train_accuracy``,
    ``val_accuracy``, ``lr``, and ``stopped`` (True on the epoch that stopped early).
    """
    if epochs < 0:
        raise ValueError("epochs must be >= 0")
    hooks = hooks or TrainHooks()
    dev = resolve_device(str(device)) if isinstance(device, str) else device
    seed_everything(seed)
    model.to(dev)
    states = _stateful_list(stateful)

    extra = list(extra_params.params) if extra_params is not None else []
    extra_ids = {id(p) for p in extra}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in extra_ids]
    optimizer = torch.optim.SGD(weights, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    extra_opt = extra_sched = None
    if extra_params is not None:
        extra_opt = torch.optim.Adam(extra, lr=extra_params.lr, weight_decay=extra_params.weight_decay)
        extra_sched = torch.optim.lr_scheduler.CosineAnnealingLR(extra_opt, T_max=max(1, epochs))

    history: list[dict] = []
    start_epoch = 0
    ckpt = checkpoint_path(hooks.checkpoint_dir, stage) if hooks.checkpoint_dir else None
    if ckpt is not None:
        payload = _load_checkpoint(ckpt, stage, model)
        if payload is not None:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            if extra_opt is not None and "extra_optimizer" in payload:
                extra_opt.load_state_dict(payload["extra_optimizer"])
                extra_sched.load_state_dict(payload["extra_scheduler"])  # type: ignore[union-attr]
            for obj, st in zip(states, payload.get("stateful", []), strict=False):
                obj.load_state_dict(st)
            history = list(payload["history"])
            start_epoch = int(payload["epoch"])
            _set_rng_state(payload["rng"])
            log.info("stage %s resumed from %s at epoch %d", stage, ckpt, start_epoch)
            if payload.get("finished"):
                return history

    n = len(data.x_train)
    trained = weights + extra
    labelled = data.y_train is not None
    if not labelled and (teacher is None or distill_loss is None):
        raise ValueError("a dataset without labels trains only by distillation: pass teacher and distill_loss")
    for epoch in range(start_epoch, epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch, model)
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, n, batch_size):
            if hooks.should_cancel is not None and hooks.should_cancel():
                raise Cancelled(f"stage {stage} cancelled at epoch {epoch + 1}")
            idx = order[i : i + batch_size]
            xb = data.x_train[idx].to(dev)
            yb = data.y_train[idx].to(dev) if labelled else None
            optimizer.zero_grad(set_to_none=True)
            if extra_opt is not None:
                extra_opt.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=dev)
            target = teacher_out = None
            if teacher is not None and (distill_weight > 0 or not labelled):
                with torch.no_grad():
                    teacher_out = teacher(xb)
                    if distill_loss is None:
                        target = F.log_softmax(teacher_out / distill_temperature, dim=1)
            for _ in range(forward_passes):
                logits = model(xb)
                if not labelled:
                    step_loss = distill_loss(logits, teacher_out)
                else:
                    step_loss = F.cross_entropy(logits, yb)
                    if teacher_out is not None:
                        kd = distill_loss(logits, teacher_out) if distill_loss is not None else _distillation(
                            logits, target, distill_temperature)
                        step_loss = (1 - distill_weight) * step_loss + distill_weight * kd
                loss = loss + step_loss / forward_passes
            loss.backward()
            if after_backward is not None:
                after_backward(model)
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(trained, grad_clip)
            optimizer.step()
            if extra_opt is not None:
                extra_opt.step()
                if extra_params is not None and extra_params.after_step is not None:
                    extra_params.after_step()
            loss_sum += float(loss.detach()) * len(idx)
            if labelled:
                correct += int((logits.detach().argmax(1) == yb).sum())
            seen += len(idx)
        current_lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if extra_sched is not None:
            extra_sched.step()
        stop = bool(on_epoch_end(epoch, model)) if on_epoch_end is not None else False
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1, seen),
            "train_accuracy": correct / max(1, seen) if labelled else None,
            "val_accuracy": evaluate(model, data.x_val, data.y_val, device=dev) if data.y_val is not None else None,
            "lr": current_lr,
            "stopped": stop,
        }
        history.append(record)
        if ckpt is not None:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "stage": stage,
                "epoch": epoch + 1,
                "finished": stop or epoch + 1 == epochs,
                "shapes": _shapes(model),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "stateful": [obj.state_dict() for obj in states],
                "rng": _rng_state(),
            }
            if extra_opt is not None:
                payload["extra_optimizer"] = extra_opt.state_dict()
                payload["extra_scheduler"] = extra_sched.state_dict()  # type: ignore[union-attr]
            _save_checkpoint(ckpt, payload)
        if hooks.on_progress is not None:
            hooks.on_progress({"stage": stage, "epochs": epochs, **record})
        if stop:
            break
    return history


__all__ = [
    "Cancelled",
    "ExtraParams",
    "Stateful",
    "TrainHooks",
    "checkpoint_path",
    "count_macs_params",
    "evaluate",
    "resolve_device",
    "seed_everything",
    "train",
]
