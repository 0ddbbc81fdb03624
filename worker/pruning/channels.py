"""Physical channel removal with Torch-Pruning's dependency graph ([EB], [SPLINE]).

Removing output channel c of a layer also removes every tensor coupled to it: the
following BN, the next layer's input channel, the other branch of a residual add, the
slice of a concatenation, the depthwise conv that consumes it. Torch-Pruning's
``DependencyGraph`` (traced with autograd, so it works on plain modules and on
onnx2torch ``GraphModule``s alike) finds these groups; we prune one group per
*coupled set* of prunable layers.

**Shears choice — coupled layers.** Layers whose output channels are tied together
(the convs feeding a residual add, a pointwise conv and the depthwise conv after it)
form one coupled set; its *root* is the member executed first. Only the root is scored
and allocated, and the root's plan is what gets removed from every member; plans given
for non-root members are ignored. A coupled set containing an excluded layer (the
classifier, ``exclude``) is left whole.

**Shears choice — mean replacement** (``compensate=True`` of :func:`prune_channels`;
off by default: in BENCHMARKS.md "Quality" it did not improve accuracy after finetuning
on MNIST-1D or digits, and before finetuning it helped or hurt depending on the model).
Removing a channel deletes its contribution to every consumer. When the removed activation is near-constant (a unit that is almost always on or off,
exactly what the isolation score and small filter norms select; typical of BN-folded
ONNX convs with tiny weights and a large bias) that contribution is mostly a constant
shift of the consumer's pre-activation, and dropping it can wreck accuracy although the
removal itself is exact. Mean replacement keeps the best constant in its place: for
each Conv/Linear ``m`` whose *input* channels the Torch-Pruning group removes (the
group's in-channel items, with Torch-Pruning's own index mapping through flatten,
concatenation and residual adds), with μ = E_probes[input of m] (per sample, per
position) restricted to the removed channels, m's linear part applied to μ is added to
m's output offset: δ = mean over output positions of (W ∗ μ_removed), added to m's bias
(created when m has none) — or, when a BatchNorm directly follows m, subtracted from
the BN's running mean (same effect in eval mode, no new parameter; in train mode the BN
re-centres anyway). By linearity this is E[m(x)] − E[m(x without the channels)] up to the
averaging over positions, exact for a Linear consumer. Means are measured on the probe
set right before each group is removed (earlier removals and compensations included).
Grouped convolutions as consumers (other than the depthwise convs that are pruned along)
are left uncompensated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from worker.io.data import DataSplits
from worker.pruning.allocation import allocate
from worker.pruning.criteria import CRITERION_NAMES, Importance, Redundancy, ScoringContext, get_criterion
from worker.pruning.custom_layers import dependency_graph
from worker.pruning.exclusion import NothingToPrune, blocked_roots
from worker.pruning.layers import PrunableLayer, classifier_name, discover_layers, resolve_excludes
from worker.pruning.regions import select_probes
from worker.pruning.training.evaluation import count_macs_params

log = logging.getLogger(__name__)

CRITERIA: tuple[str, ...] = CRITERION_NAMES  # registered in service.core.registry


def _out_fn(module: nn.Module):
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def _build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return dependency_graph(model, example_input.to(device))  # with Shears' custom pruners


def _out_members(graph: tp.DependencyGraph, group, names: dict[nn.Module, str]) -> set[str]:
    """Names of the prunable layers whose OUTPUT channels a group removes."""
    members = set()
    for dep, _idxs in group:
        module = dep.target.module
        if module in names and (
            graph.is_out_channel_pruning_fn(dep.handler) or dep.handler is tp.prune_depthwise_conv_out_channels
        ):
            members.add(names[module])
    return members


def _coupled_sets_from_graph(graph: tp.DependencyGraph, layers: Sequence[PrunableLayer]) -> list[list[str]]:
    names = {layer.module: layer.name for layer in layers}
    order = {layer.name: i for i, layer in enumerate(layers)}
    parent = {layer.name: layer.name for layer in layers}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for layer in layers:
        if layer.module not in graph.module2node:
            continue
        group = graph.get_pruning_group(layer.module, _out_fn(layer.module), list(range(layer.out_features)))
        for other in _out_members(graph, group, names) | {layer.name}:
            ra, rb = find(layer.name), find(other)
            if ra != rb:
                # the earlier-executed layer stays the representative (the root)
                if order[ra] < order[rb]:
                    parent[rb] = ra
                else:
                    parent[ra] = rb
    sets: dict[str, list[str]] = {}
    for layer in layers:
        sets.setdefault(find(layer.name), []).append(layer.name)
    return sorted(sets.values(), key=lambda s: order[s[0]])


def coupled_sets(
    model: nn.Module, example_input: torch.Tensor, layers: Sequence[PrunableLayer] | None = None
) -> list[list[str]]:
    """Prunable layers grouped by coupled output channels, each list root first,
    sets in execution order (see the module docstring)."""
    layers = list(layers) if layers is not None else discover_layers(model)
    was_training = model.training
    try:
        graph = _build_graph(model, example_input)
        return _coupled_sets_from_graph(graph, layers)
    finally:
        model.train(was_training)


_COMPENSABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@torch.no_grad()
def _input_means(
    model: nn.Module, modules: Sequence[nn.Module], probes: torch.Tensor, batch_size: int = 256
) -> dict[nn.Module, torch.Tensor]:
    """E over ``probes`` of each module's input (eval mode): shape (C, *spatial) for a
    conv, (features,) for a linear (leading dims averaged)."""
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def hook(module, inputs, _out):
        x = inputs[0].detach().double()
        if isinstance(module, nn.Linear):
            x = x.reshape(-1, x.shape[-1])
        sums[module] = sums.get(module, 0) + x.sum(0)
        counts[module] = counts.get(module, 0) + x.shape[0]

    handles = [m.register_forward_hook(hook) for m in set(modules)]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(probes), batch_size):
            model(probes[i : i + batch_size].to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {m: (sums[m] / counts[m]) for m in sums}


@torch.no_grad()
def _compensate(
    model: nn.Module, graph: tp.DependencyGraph, group, probes: torch.Tensor, bn_after: dict[nn.Module, nn.Module]
) -> int:
    """Mean replacement for one group before it is removed (module docstring).
    Returns the number of consumers compensated."""
    targets: list[tuple[nn.Module, list[int]]] = []
    for dep, idxs in group:
        module = dep.target.module
        if not graph.is_in_channel_pruning_fn(dep.handler) or not isinstance(module, _COMPENSABLE):
            continue
        if getattr(module, "groups", 1) != 1 or not idxs:
            continue
        targets.append((module, sorted({int(i) for i in idxs})))
    if not targets:
        return 0
    means = _input_means(model, [m for m, _ in targets], probes)
    done = 0
    for module, idxs in targets:
        mu = means.get(module)
        if mu is None:  # not executed on these inputs
            continue
        removed = torch.zeros_like(mu)
        index = torch.tensor(idxs, device=mu.device)
        removed.index_copy_(0, index, mu.index_select(0, index))
        weight = module.weight.detach().double()
        if isinstance(module, nn.Linear):
            delta = weight @ removed
        else:
            out = module._conv_forward(removed.unsqueeze(0), weight, None)
            delta = out.flatten(2).mean(dim=2).squeeze(0)
        delta = delta.to(module.weight.dtype)
        bn = bn_after.get(module)
        if bn is not None and bn.running_mean is not None:
            bn.running_mean.sub_(delta.to(bn.running_mean.dtype))
        elif module.bias is not None:
            module.bias.add_(delta.to(module.bias.dtype))
        else:
            module.bias = nn.Parameter(delta.clone())
        done += 1
    return done


def remove_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    plan: dict[str, torch.Tensor],
    ignored_layers: Iterable[str | nn.Module] = (),
    *,
    compensate_probes: torch.Tensor | None = None,
    graph: tp.DependencyGraph | None = None,
) -> nn.Module:
    """Physically remove ``plan[name]`` (output-channel indices) from each named layer
    and from everything coupled to it; return the same (now smaller) model.

    For coupled sets the root's plan wins (module docstring). Sets touching an ignored
    layer are skipped with a warning. The model keeps its input/output shapes. With
    ``compensate_probes``, each removal is mean-replaced on those inputs (module
    docstring). ``graph``: this model's dependency graph when the caller has built it already
    (it is built once per job: tracing a large model costs seconds).
    """
    layers = discover_layers(model)
    bn_after = {layer.module: layer.bn for layer in layers if layer.bn is not None}
    by_name = {layer.name: layer for layer in layers}
    unknown = [n for n in plan if n not in by_name]
    if unknown:
        raise ValueError(f"plan names unknown layers: {unknown}")
    ignored = {x if isinstance(x, str) else _name_of(model, x) for x in ignored_layers}
    was_training = model.training
    try:
        graph = graph if graph is not None else _build_graph(model, example_input)
        for members in _coupled_sets_from_graph(graph, layers):
            root = members[0]
            for other in members[1:]:
                if other in plan and len(plan[other]):
                    log.warning("plan for %s ignored: it is coupled to %s, whose plan wins", other, root)
            idxs = sorted({int(i) for i in plan.get(root, torch.zeros(0)).tolist()})
            if not idxs:
                continue
            if ignored & set(members):
                log.warning("not pruning %s: coupled to excluded layer(s) %s", root, sorted(ignored & set(members)))
                continue
            layer = by_name[root]
            if max(idxs) >= layer.out_features or min(idxs) < 0:
                raise ValueError(f"channel index out of range for {root} ({layer.out_features} channels)")
            if len(idxs) >= layer.out_features:
                raise ValueError(f"the plan removes every channel of {root}")
            group = graph.get_pruning_group(layer.module, _out_fn(layer.module), idxs)
            if not graph.check_pruning_group(group):
                raise ValueError(f"pruning {root} would empty a coupled layer")
            if compensate_probes is not None:
                _compensate(model, graph, group, compensate_probes, bn_after)
            group.prune(record_history=False)
    finally:
        model.train(was_training)
    return model


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module is not part of the model")


# --------------------------------------------------------------------------- end to end


@dataclass
class PruneResult:
    """What :func:`prune_channels` did: the pruned model and per-layer bookkeeping."""

    model: nn.Module
    criterion: str
    plan: dict[str, list[int]]  # removed channel indices per root layer (original numbering)
    channels_before: dict[str, int]
    channels_after: dict[str, int]
    coupled: list[list[str]]
    excluded: list[str]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    scores: dict[str, list[float]] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)  # excluded root → why its channels cannot go

    def layer_table(self) -> list[dict]:
        """One row per prunable layer for the report."""
        return [
            {
                "layer": n,
                "before": b,
                "after": self.channels_after.get(n, b),
                "removed": b - self.channels_after.get(n, b),
            }
            for n, b in self.channels_before.items()
        ]


def score_layers(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    criterion: str | Importance,
    probes: torch.Tensor | None = None,
    *,
    seed: int = 0,
    max_positions: int = 64,
    redundancy: Redundancy = "greedy",
) -> dict[str, torch.Tensor]:
    """Scores of ``layers`` by ``criterion`` (a registered name or an :class:`Importance`).
    Criteria that need probes get ``probes``; the spline redundancy term is ``greedy``
    (removal-time scores, see :mod:`worker.pruning.scoring`) or ``pairwise``."""
    importance = get_criterion(criterion) if isinstance(criterion, str) else criterion
    if importance.needs_probes and probes is None:
        raise ValueError(f"criterion {importance.name!r} needs probes")
    return importance(model, layers, ScoringContext(probes, seed, max_positions, redundancy))


def prune_channels(
    model: nn.Module,
    data: DataSplits,
    *,
    criterion: str | Importance = "spline",
    ratio: float = 0.5,
    scope: Literal["global", "layerwise"] = "global",
    round_to: int = 1,
    min_channels: int = 1,
    exclude: Iterable[str] = ("last",),
    probes_n: int = 512,
    seed: int = 0,
    blend: int = 0,
    max_positions: int = 64,
    redundancy: Redundancy = "greedy",
    compensate: bool = False,
    min_keep_fraction: float = 0.1,
    normalize: Literal["mean", "none"] | None = None,
    scores: dict[str, torch.Tensor] | None = None,
    keep: dict[str, int] | None = None,
) -> PruneResult:
    """Score, allocate and physically remove channels (ALGORITHMS §3); in place.

    The classifier (``last``) is always excluded. Only coupled-set roots are scored and
    allocated. **Shears choices:** ``bn_scale`` leaves layers without a BN untouched
    (network slimming prunes through BN scales only); in ``global`` scope ``l1`` scores
    are divided by their layer's mean (Torch-Pruning's "mean" normalizer), because raw
    filter norms are not comparable across layers; spline scores are comparable by
    construction and are used as they are; spline redundancy is ``greedy`` by default
    (:mod:`worker.pruning.scoring`); removed channels are mean-replaced on the probe
    set when ``compensate`` (module docstring; opt-in); in ``global`` scope every layer keeps at
    least ``max(min_channels, ceil(min_keep_fraction × width))`` channels, so no layer
    collapses to a single channel (a relative guard rail on top of the absolute one).

    ``scores``: the :attr:`PruneResult.scores` of an earlier call on this same model (a copy of
    it), used instead of scoring again — the ratio search prunes many copies at many ratios
    and the scores do not depend on the ratio (the mean normalizer is idempotent).
    ``keep``: channels to keep per root layer, instead of the ratio's (``layerwise`` only;
    :func:`worker.pruning.allocation.allocate`).
    """
    layers = discover_layers(model)
    if not layers:
        raise ValueError("the model has no Conv/Linear layer to prune")
    excluded = resolve_excludes(model, exclude, layers)
    last = classifier_name(layers)
    if last is not None:
        excluded.add(last)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = data.x_train[:1].to(device)
    channels_before = {layer.name: layer.out_features for layer in layers}
    macs_before, params_before = count_macs_params(model, example)

    was_training = model.training
    graph = _build_graph(model, example)  # once: coupled sets here, the removal below
    model.train(was_training)
    sets = _coupled_sets_from_graph(graph, layers)
    blocked = blocked_roots(model, example, [s[0] for s in sets if not (set(s) & excluded)])  # partial pruning
    roots = {s[0] for s in sets if not (set(s) & excluded) and s[0] not in blocked}
    candidates = [layer for layer in layers if layer.name in roots and layer.out_features > 1]
    if not candidates and blocked:
        raise NothingToPrune(blocked)
    excluded |= set(blocked)
    if not 0.0 <= min_keep_fraction < 1.0:
        raise ValueError("min_keep_fraction must be in [0, 1)")
    importance = get_criterion(criterion) if isinstance(criterion, str) else criterion
    probes = None
    if (importance.needs_probes and scores is None) or compensate:
        probes = select_probes(data.x_train, probes_n, seed, blend, y=data.y_train)
    if scores is None:
        scores = score_layers(
            model, candidates, importance, probes, seed=seed, max_positions=max_positions, redundancy=redundancy
        )
    else:
        scores = {layer.name: torch.as_tensor(scores[layer.name]) for layer in candidates if layer.name in scores}
    if not scores:
        raise ValueError(f"criterion {importance.name!r} found nothing to score (bn_scale needs BatchNorm layers)")
    if normalize is None:
        normalize = importance.global_normalizer
    if normalize == "mean" and scope == "global":
        scores = {n: s / s.mean().clamp_min(1e-12) for n, s in scores.items()}
    floors = None
    if scope == "global" and min_keep_fraction > 0:
        floors = {n: max(min_channels, math.ceil(min_keep_fraction * s.numel() - 1e-9)) for n, s in scores.items()}
    plan = allocate(scores, ratio, scope, min_channels=min_channels, round_to=round_to, floors=floors, keep=keep)
    remove_channels(
        model, example, plan, ignored_layers=excluded, compensate_probes=probes if compensate else None, graph=graph
    )

    channels_after = {
        layer.name: int(getattr(layer.module, "out_channels", getattr(layer.module, "out_features", 0)))
        for layer in layers
    }
    macs_after, params_after = count_macs_params(model, example)
    return PruneResult(
        model=model,
        criterion=importance.name,
        plan={n: [int(i) for i in idx.tolist()] for n, idx in plan.items()},
        channels_before=channels_before,
        channels_after=channels_after,
        coupled=sets,
        excluded=sorted(excluded),
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        scores={n: [float(v) for v in s.tolist()] for n, s in scores.items()},
        blocked=blocked,
    )


__all__ = [
    "CRITERIA",
    "PruneResult",
    "coupled_sets",
    "prune_channels",
    "remove_channels",
    "score_layers",
]
