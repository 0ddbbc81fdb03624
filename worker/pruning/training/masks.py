"""Mask freezing: finetune with fixed unstructured masks (after ProbMask or magnitude pruning)."""

from __future__ import annotations

import torch
from torch import nn

from worker.pruning.training.callbacks import BaseCallback, TrainState


class FreezeMasks(BaseCallback):
    """Keep the weights outside ``masks`` (``{layer name: bool tensor of the weight's
    shape}``) at exactly zero: they are zeroed when training starts and ends, and their
    gradients are masked after every backward, so SGD's momentum and weight decay never
    move them ([PROBMASK]'s finetuning with the mask fixed)."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self._on_device: dict[str, torch.Tensor] = {}
        self._targets: dict[str, nn.Module] = {}

    def _mask(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        mask = self._on_device.get(name)
        if mask is None or mask.device != weight.device or mask.dtype != weight.dtype:
            mask = self._on_device[name] = self.masks[name].to(weight.device, weight.dtype)
        return mask

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the masked-out weights of ``model``."""
        modules = dict(model.named_modules())
        self._targets = {name: modules[name] for name in self.masks}
        for name, module in self._targets.items():
            module.weight.mul_(self._mask(name, module.weight))

    def on_train_start(self, state: TrainState) -> None:
        self.apply(state.model)

    def after_backward(self, state: TrainState) -> None:
        for name, module in self._targets.items():
            if module.weight.grad is not None:
                module.weight.grad.mul_(self._mask(name, module.weight))

    def on_train_end(self, state: TrainState) -> None:
        self.apply(state.model)


__all__ = ["FreezeMasks"]
