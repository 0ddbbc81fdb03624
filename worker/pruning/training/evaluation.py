"""Accuracy and cost counts of a model (no training)."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu"
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
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
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


__all__ = ["count_macs_params", "evaluate"]
