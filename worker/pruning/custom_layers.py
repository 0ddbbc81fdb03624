"""Layers Torch-Pruning does not know, and the custom pruners that teach it about them.

Exporters write per-channel constants as plain arithmetic: ``Mul(x, s[1, C, 1, 1])``,
``Add(x, b[1, C, 1, 1])`` (folded BatchNorm, HardSwish/SE blocks, Paddle's affine
channels). As a buffer next to the graph, such a constant is invisible to Torch-Pruning's
dependency graph: removing channel c from ``x`` leaves ``C`` values and the broadcast
fails. :class:`ChannelConstant` holds the values as a parameter of shape ``[C]``, and
:class:`ChannelConstantPruner` (Torch-Pruning's ``BasePruningFunc`` custom-pruner
interface) removes entries together with the channels; in and out channels are the
same tensor, so ``prune_in_channels = prune_out_channels`` couples them (Torch-Pruning's
rule for elementwise layers such as BatchNorm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

OPS = ("mul", "add", "sub", "div")


class ChannelConstant(nn.Module):
    """``x op value`` (or ``value op x`` when ``swap``) with ``value`` broadcast along axis 1."""

    def __init__(self, op: str, value: torch.Tensor, rank: int, swap: bool = False) -> None:
        super().__init__()
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}")
        self.op, self.rank, self.swap = op, int(rank), bool(swap)
        self.value = nn.Parameter(value.detach().reshape(-1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.value.view(1, -1, *([1] * (self.rank - 2)))
        a, b = (value, x) if self.swap else (x, value)
        if self.op == "mul":
            return a * b
        if self.op == "add":
            return a + b
        if self.op == "sub":
            return a - b
        return a / b

    def extra_repr(self) -> str:
        return f"op={self.op}, channels={self.value.numel()}, rank={self.rank}, swap={self.swap}"


class ChannelConstantPruner(tp.pruner.function.BasePruningFunc):
    """Removes the entries of a :class:`ChannelConstant` with the channels they scale/shift."""

    def prune_out_channels(self, layer: ChannelConstant, idxs: Sequence[int]) -> ChannelConstant:
        drop = set(int(i) for i in idxs)
        keep = torch.tensor([i for i in range(layer.value.numel()) if i not in drop], device=layer.value.device)
        layer.value = nn.Parameter(layer.value.data.index_select(0, keep), requires_grad=layer.value.requires_grad)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: ChannelConstant) -> int:
        return int(layer.value.numel())

    def get_in_channels(self, layer: ChannelConstant) -> int:
        return int(layer.value.numel())


CUSTOM_PRUNERS: dict[type[nn.Module], tp.pruner.function.BasePruningFunc] = {ChannelConstant: ChannelConstantPruner()}


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` with Shears' custom pruners registered."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, customized_pruners=CUSTOM_PRUNERS, verbose=False
        )
