"""Unstructured baselines (ALGORITHMS §5): global magnitude pruning and random pruning.

Both use ``torch.nn.utils.prune`` over the Conv/Linear weights of the model (minus
``exclude``) as one global pool, then make the pruning permanent (``prune.remove``):
the model is left with plain dense weights containing zeros and no pruning hooks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import prune

from worker.pruning.layers import discover_layers, resolve_excludes


def _targets(model: nn.Module, exclude: Iterable[str]) -> dict[str, nn.Module]:
    layers = discover_layers(model)
    excluded = resolve_excludes(model, exclude, layers)
    return {layer.name: layer.module for layer in layers if layer.name not in excluded}


def _global_prune(
    model: nn.Module, sparsity: float, exclude: Iterable[str], method: type[prune.BasePruningMethod]
) -> dict[str, torch.Tensor]:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError("sparsity must be in [0, 1)")
    targets = _targets(model, exclude)
    params = [(m, "weight") for m in targets.values()]
    prune.global_unstructured(params, pruning_method=method, amount=sparsity)
    masks = {}
    for name, module in targets.items():
        masks[name] = module.weight_mask.detach().bool().cpu().clone()
        prune.remove(module, "weight")
    return masks


def global_magnitude_prune(model: nn.Module, sparsity: float, exclude: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Zero the ``sparsity`` fraction of smallest-|w| weights over all masked layers
    together (``global_unstructured`` + ``L1Unstructured``); returns the keep masks."""
    return _global_prune(model, sparsity, exclude, prune.L1Unstructured)


def random_unstructured_prune(
    model: nn.Module, sparsity: float, exclude: Iterable[str] = (), seed: int = 0
) -> dict[str, torch.Tensor]:
    """Zero a uniformly random ``sparsity`` fraction of the weights of all masked layers
    together (``global_unstructured`` + ``RandomUnstructured``, fixed ``seed``);
    returns the keep masks. The global RNG state is left as it was."""
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return _global_prune(model, sparsity, exclude, prune.RandomUnstructured)


__all__ = ["global_magnitude_prune", "random_unstructured_prune"]
