"""The training loop every engine stage shares (dense/early-bird training, ProbMask, finetuning).

SGD with momentum and weight decay on the weights, a cosine learning rate per epoch, and a
loss component (cross-entropy, or distillation from a teacher). Everything a stage adds —
detectors, ProbMask's scores and projection, mask freezing, warm-up, early stopping, best
weights, progress, cancellation, checkpoints — is a callback
(:mod:`worker.pruning.training.callbacks`). Pure torch: no settings, queues or storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from worker.io.data import DataSplits
from worker.pruning.training.callbacks import TrainState
from worker.pruning.training.config import TrainConfig, lr_factor
from worker.pruning.training.devices import resolve_device, seed_everything
from worker.pruning.training.evaluation import evaluate
from worker.pruning.training.losses import CrossEntropy, Loss


def _ordered(callbacks: Iterable[Any]) -> list[Any]:
    return sorted(callbacks, key=lambda cb: getattr(cb, "order", 0))  # stable: list order within one order


def _call(callbacks: Sequence[Any], hook: str, state: TrainState) -> None:
    for cb in callbacks:
        method = getattr(cb, hook, None)
        if method is not None:
            method(state)


def train(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    callbacks: Iterable[Any] = (),
    *,
    loss: Loss | None = None,
) -> list[dict]:
    """Train ``model`` in place as ``config`` says, with ``callbacks``; return the history.

    Deterministic on CPU for a fixed seed: minibatch order comes from a generator seeded by
    ``(seed, epoch)`` and the checkpoint callback restores every RNG state, so a resumed run
    ends with the same weights as an uninterrupted one.

    Returns one dict per epoch: ``epoch`` (1-based), ``loss``, ``train_accuracy``,
    ``val_accuracy``, ``lr``, and ``stopped`` (True on the epoch that stopped early).
    """
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    callbacks = _ordered(callbacks)
    loss_fn = loss or CrossEntropy()
    if data.y_train is None and isinstance(loss_fn, CrossEntropy):
        raise ValueError("a dataset without labels trains only by distillation: pass a distillation loss")

    claimed = {id(p) for cb in callbacks if callable(getattr(cb, "parameters", None)) for p in cb.parameters()}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    optimizer = torch.optim.SGD(weights, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(data.x_train)
    state = TrainState(
        model=model,
        data=data,
        config=config,
        device=device,
        optimizer=optimizer,
        steps_per_epoch=config.steps_per_epoch(n),
        callbacks=callbacks,
    )

    for cb in callbacks:
        restore = getattr(cb, "restore", None)
        if restore is not None:
            restore(state)
    if not state.finished:
        _call(callbacks, "on_train_start", state)
        trainable = state.trainable
        for epoch in range(state.start_epoch, config.epochs):
            state.epoch = epoch
            _run_epoch(state, callbacks, trainable, loss_fn, epoch, n)
            if state.stop:
                break
    _call(callbacks, "on_train_end", state)
    return state.history


def _run_epoch(state: TrainState, callbacks, trainable, loss_fn: Loss, epoch: int, n: int) -> None:
    config, model, data, device, optimizer = state.config, state.model, state.data, state.device, state.optimizer
    lr = config.lr * lr_factor(config, epoch)
    prepare = getattr(loss_fn, "prepare", None)
    _call(callbacks, "on_epoch_start", state)
    model.train()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
    # summed on the device and read once per epoch: a host read per step stalls a GPU's queue
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for i in range(0, n, config.batch_size):
        for group in optimizer.param_groups:
            group["lr"] = lr
        _call(callbacks, "on_step_start", state)
        idx = order[i : i + config.batch_size]
        xb = data.x_train[idx].to(device)
        yb = data.y_train[idx].to(device) if data.y_train is not None else None  # None: label-free
        state.batch = (xb, yb)
        for p in trainable:
            p.grad = None
        loss = torch.zeros((), device=device)
        if prepare is not None:
            prepare(xb)  # a teacher runs before the student: the two never hold activations at once
        for _ in range(config.forward_passes):
            logits = model(xb)
            loss = loss + loss_fn(logits, xb, yb) / config.forward_passes
        loss.backward()
        state.loss = loss.detach()
        _call(callbacks, "after_backward", state)
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        _call(callbacks, "after_step", state)
        loss_sum += state.loss.double() * len(idx)
        if yb is not None:
            correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(idx)
        state.step += 1
    state.batch = None
    state.record = {
        "epoch": epoch + 1,
        "loss": float(loss_sum) / max(1, seen),
        "train_accuracy": int(correct) / max(1, seen) if data.y_train is not None else None,
        "val_accuracy": evaluate(model, data.x_val, data.y_val, device=device) if data.y_val is not None else None,
        "lr": lr,
        "stopped": False,
    }
    state.history.append(state.record)
    for cb in callbacks:
        method = getattr(cb, "on_epoch_end", None)
        if method is not None and method(state):
            state.stop = True
        state.record["stopped"] = state.stop


__all__ = ["train"]
