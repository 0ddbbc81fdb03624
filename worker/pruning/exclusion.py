"""Partial pruning: find the coupled sets whose channels cannot be removed, so the rest can be.

A real model has layers whose width is part of a contract: a classifier's logits, a
detection head whose channels are box coordinates and classes, a Reshape/Split whose
constant sizes were computed from a channel count at export time. Pruning such a set
either breaks the forward pass or changes what the model outputs. Instead of refusing
the whole model, each coupled set (root first, :func:`worker.pruning.channels.coupled_sets`)
is tried on a copy: remove one output channel of the root with Torch-Pruning (custom
pruners included), run the copy at batch 2, and compare every output's shape with the
original's. A set that raises or changes an output is *blocked* and excluded with the
reason; the others stay candidates. Trials accumulate on one copy; after a blocked set
the copy is rebuilt from the original with the sets that passed (one dependency graph
per blocked set, not per set).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from worker.pruning.custom_layers import dependency_graph


class NothingToPrune(ValueError):
    """Every coupled set of the model is blocked; ``blockers`` maps layer → reason."""

    def __init__(self, blockers: dict[str, str]) -> None:
        self.blockers = blockers
        listed = "; ".join(f"{name}: {reason}" for name, reason in list(blockers.items())[:8])
        more = f" (and {len(blockers) - 8} more)" if len(blockers) > 8 else ""
        super().__init__(f"no layer of the model can be channel-pruned: {listed}{more}")


def _out_fn(module: nn.Module):
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def _flat(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [t for item in output for t in _flat(item)] if isinstance(output, (list, tuple)) else []


@torch.no_grad()
def output_shapes(model: nn.Module, inputs: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of every tensor ``model`` returns (tuples, lists and dicts flattened)."""
    return [tuple(t.shape) for t in _flat(model(inputs))]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return f"removing a channel breaks the graph: {text}"


def blocked_roots(model: nn.Module, example: torch.Tensor, roots: Sequence[str]) -> dict[str, str]:
    """``{root: reason}`` for the coupled-set roots whose channels cannot be removed (module doc).

    ``example`` is one input batch; trials run at batch 2. ``model`` is not modified. The
    answer is remembered on the model for the same roots and parameter shapes (inspection
    and pruning of one model ask twice).
    """
    key = (tuple(roots), tuple(example.shape[1:]), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))
    cached = getattr(model, "_shears_blocked", None)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    blocked = _blocked_roots(model, example, roots)
    object.__setattr__(model, "_shears_blocked", (key, dict(blocked)))
    return blocked


def _blocked_roots(model: nn.Module, example: torch.Tensor, roots: Sequence[str]) -> dict[str, str]:
    was_training = model.training
    model.eval()
    probe = torch.cat([example[:1], example[:1]], 0)
    reference = output_shapes(model, probe)
    blocked: dict[str, str] = {}
    passed: list[str] = []

    def fresh() -> tuple[nn.Module, tp.DependencyGraph]:
        trial = copy.deepcopy(model).eval()
        graph = dependency_graph(trial, example)
        for name in passed:
            _remove_one(trial, graph, name)
        return trial, graph

    try:
        trial, graph = fresh()
        for root in roots:
            try:
                if not _remove_one(trial, graph, root):
                    continue
                shapes = output_shapes(trial, probe)
                if shapes != reference:
                    changed = [
                        f"output {i}: {list(a)} → {list(b)}"
                        for i, (a, b) in enumerate(zip(reference, shapes, strict=False))
                        if a != b
                    ] or [f"{len(reference)} → {len(shapes)} outputs"]
                    raise _ChangesOutputs("its channels reach a model output (" + "; ".join(changed[:2]) + ")")
                passed.append(root)
            except _ChangesOutputs as exc:
                blocked[root] = str(exc)
                trial, graph = fresh()
            except Exception as exc:  # noqa: BLE001 - any failure blocks this set only
                blocked[root] = _reason(exc)
                trial, graph = fresh()
    finally:
        model.train(was_training)
    return blocked


class _ChangesOutputs(Exception):
    pass


def _remove_one(trial: nn.Module, graph: tp.DependencyGraph, name: str) -> bool:
    """Remove output channel 0 of ``name`` and everything coupled to it; False if not allowed."""
    layer = trial.get_submodule(name)
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if width < 2:
        return False
    group = graph.get_pruning_group(layer, _out_fn(layer), idxs=[0])
    if not graph.check_pruning_group(group):
        return False
    group.prune(record_history=False)
    return True
