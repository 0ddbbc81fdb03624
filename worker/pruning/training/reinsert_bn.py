"""BatchNorm re-inserted for finetuning a BN-folded network, folded back afterwards.

A model exported in eval mode (ONNX) has its BatchNorm folded into the convolutions: after
channel pruning, the remaining weights must be re-scaled by plain SGD, which is poorly
conditioned without normalisation (Ioffe & Szegedy 2015). :func:`insert_batchnorm` attaches a
BatchNorm to every convolution's output (a child module applied by a forward hook, so module
names, the graph and masks keyed by layer name are unchanged), initialised on training data
to the identity in eval mode (running statistics = the conv output's statistics, γ = √(var+ε),
β = mean), so the model starts exactly where pruning left it. Each filter is also rescaled to
the norm of PyTorch's default initialisation (1/√3), the BN compensating: a folded filter
carries its old BN scale (layer means up to 9× the initial norm were measured on folded exports), and
behind a BatchNorm the effective learning rate of a filter falls with the square of its norm
(van Laarhoven 2017), so without it finetuning crawls. :func:`fold_batchnorm` folds each
BN back into its conv (W ← W·γ/√(var+ε), b ← (b − mean)·γ/√(var+ε) + β) and removes it: the
exported model has the original layers only.
"""

from __future__ import annotations

import torch
from torch import nn

ATTR = "reinserted_bn"
_BN_FOR = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
_HOOK = "_reinserted_bn_hook"
INIT_FILTER_NORM = 3**-0.5  # E‖w‖ of a filter under PyTorch's default init, U(±1/√fan_in)


def _apply_bn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return getattr(module, ATTR)(output)


def _convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) in _BN_FOR and not hasattr(m, ATTR)]


@torch.no_grad()
def insert_batchnorm(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 128,
    max_batches: int = 20,
    seed: int = 0,
    filter_norm: float | None = INIT_FILTER_NORM,
) -> int:
    """Attach an identity-initialised BatchNorm after every Conv1d/2d/3d of ``model``; the
    statistics come from up to ``max_batches`` minibatches of ``x`` (eval mode). With
    ``filter_norm``, every non-zero filter is rescaled to that norm first (the model's outputs
    do not change). Returns the number of BatchNorms inserted."""
    convs = _convs(model)
    if not convs or len(x) == 0:
        return 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sums: dict[int, list[torch.Tensor]] = {}

    def collect(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        dims = [d for d in range(output.dim()) if d != 1]
        acc = sums.setdefault(id(module), [torch.zeros((), dtype=torch.float64)] * 3)
        out = output.detach().double()
        acc[0] = acc[0] + out.sum(dims)
        acc[1] = acc[1] + (out * out).sum(dims)
        acc[2] = acc[2] + out.numel() / out.shape[1]

    handles = [conv.register_forward_hook(collect) for conv in convs]
    was_training = model.training
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    try:
        model.eval()
        for i in range(0, min(len(x), batch_size * max_batches), batch_size):
            model(x[order[i : i + batch_size]].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    inserted = 0
    for conv in convs:
        if id(conv) not in sums:
            continue  # not on the forward path
        total, squares, count = sums[id(conv)]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)
        scale = torch.ones_like(mean)
        if filter_norm is not None:
            norms = conv.weight.detach().flatten(1).norm(dim=1).to(mean)  # mean lives where the model ran
            scale = torch.where(norms > 0, filter_norm / norms.clamp_min(1e-12), scale)
            conv.weight.mul_(scale.to(conv.weight).reshape([-1] + [1] * (conv.weight.dim() - 1)))
            if conv.bias is not None:
                conv.bias.mul_(scale.to(conv.bias))
        bn = _BN_FOR[type(conv)](conv.weight.shape[0]).to(device=device, dtype=conv.weight.dtype)
        # the conv's output is now scale · y: normalise it, then map back to y (identity in eval mode)
        bn.running_mean.copy_(scale * mean)
        bn.running_var.copy_(scale * scale * var)
        bn.weight.copy_((scale * scale * var + bn.eps).sqrt() / scale)
        bn.bias.copy_(mean)
        bn.train(was_training)
        conv.add_module(ATTR, bn)
        setattr(conv, _HOOK, conv.register_forward_hook(_apply_bn))
        inserted += 1
    return inserted


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm :func:`insert_batchnorm` attached back into its conv (its running
    statistics: eval-mode behaviour is unchanged) and remove it. Returns the number folded."""
    folded = 0
    for conv in [m for m in model.modules() if hasattr(m, ATTR)]:
        bn = getattr(conv, ATTR)
        getattr(conv, _HOOK).remove()
        delattr(conv, _HOOK)
        delattr(conv, ATTR)
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        shape = [-1] + [1] * (conv.weight.dim() - 1)
        conv.weight.mul_(scale.reshape(shape))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale + bn.bias
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.detach().clone())
        else:
            conv.bias.copy_(new_bias)
        folded += 1
    return folded


@torch.no_grad()
def reset_inserted_batchnorm(model: nn.Module) -> int:
    """Give every BatchNorm :func:`insert_batchnorm` attached PyTorch's fresh state (γ = 1, β = 0,
    running mean 0 and variance 1) instead of the identity: for training from scratch, where
    normalising from the first step is the point ([EB]'s dense phase: an untrained BN-folded
    ResNet-20 export at lr 0.1 had a training loss of 1.37 after 8 epochs with the identity,
    0.59 with fresh BatchNorm; BENCHMARKS.md). Returns the number reset."""
    bns = [getattr(conv, ATTR) for conv in model.modules() if hasattr(conv, ATTR)]
    for bn in bns:
        bn.reset_parameters()
    return len(bns)


__all__ = ["fold_batchnorm", "insert_batchnorm", "reset_inserted_batchnorm"]
