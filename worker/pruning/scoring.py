"""Spline channel scores ([SPLINE]; ALGORITHMS §3): the math behind the ``spline`` and
``spline_geometry`` criteria (:mod:`worker.pruning.criteria`).

Every function returns ``{layer name: float32 tensor of shape (units,)}``; lower means
"prune first".

**Shears choice — greedy redundancy** (``redundancy="greedy"``, what
:func:`worker.pruning.channels.prune_channels` uses). The redundancy r_k of ALGORITHMS §3
is pairwise: both units of a near-duplicate pair score ≈ 0, so a plain "lowest scores
first" removes *both* twins, although removing one already deletes nothing from the
partition and the survivor then carries a hyperplane no other unit has. In global scope
this empties late layers (down to ``min_channels``) and accuracy collapses. The greedy
variant removes units one at a time, within each layer: take the unit with the lowest
current score s_k = min(i_k, r_k), remove it, and recompute the redundancy of the
remaining units against the **kept** units only (r_k = min over kept k' ≠ k), so the twin
of a removed unit is no longer redundant. The score returned for a unit is its score at
the moment the greedy pass removes it (the *removal-time score*). Removing a unit can only
raise the others' redundancy, so removal-time scores are non-decreasing along the greedy
order, ties within a layer are removed in index order, and sorting by (score, index) —
what :func:`worker.pruning.allocation.allocate` does, per layer and over the global
pool — reproduces the greedy order exactly: the lowest-k of a layer is always a greedy
prefix. Isolation does not change (a unit's activity does not depend on its neighbours).
Units of different layers do not interact (their codes live in different spaces), so the
per-layer greedy passes merged by score equal one global greedy pass. ``"pairwise"`` is
the literal formula of ALGORITHMS §3 (kept as an option, and for comparison).
The weight-space variant applies the same greedy pass to its angle-based redundancy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from worker.pruning.layers import PrunableLayer
from worker.pruning.regions import RegionCodes, stream_preactivations

_CHUNK_BYTES = 8192  # 65,536 bits per matmul chunk: float32 dot products stay exact

Redundancy = Literal["greedy", "pairwise"]


# --------------------------------------------------------------------------- greedy pass


def greedy_removal(isolation: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy removal order of one layer's units and each unit's removal-time score.

    ``isolation`` (units,) and ``distance`` (units, units): the folded pairwise distance
    (min(H, 1 − H) in data space, θ/π in weight space), symmetric, values in [0, 0.5];
    the diagonal is ignored. Redundancy is r_k = min(0.5, min over kept k' ≠ k of
    distance[k, k']) (0.5 for a unit with no kept neighbour). Repeatedly remove the kept
    unit with the lowest s_k = min(i_k, r_k) (ties: lowest index) and refresh r of the
    units whose nearest kept neighbour it was. Returns (order, scores) with
    ``scores[order]`` non-decreasing. O(units²) memory, about O(units²) time in practice.
    """
    units = int(isolation.shape[0])
    iso = np.asarray(isolation, dtype=np.float64)
    if units == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    d = np.array(distance, dtype=np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    red = np.minimum(d[np.arange(units), nearest], 0.5)
    kept = np.ones(units, dtype=bool)
    order = np.empty(units, dtype=np.int64)
    removal = np.empty(units, dtype=np.float64)
    for step in range(units):
        current = np.where(kept, np.minimum(iso, red), np.inf)
        k = int(current.argmin())  # argmin returns the lowest index on ties
        order[step], removal[k] = k, current[k]
        kept[k] = False
        d[:, k] = np.inf
        stale = np.flatnonzero(kept & (nearest == k))
        if stale.size:
            rows = d[stale]
            nearest[stale] = rows.argmin(axis=1)
            red[stale] = np.minimum(rows[np.arange(stale.size), nearest[stale]], 0.5)
    # float noise aside the sequence is already non-decreasing; make it exactly so
    removal[order] = np.maximum.accumulate(removal[order])
    return order, removal


# --------------------------------------------------------------------------- data space


def _pairwise_agreement(codes: RegionCodes) -> np.ndarray:
    """G[k, k'] = number of positions where both units are on, exact, float64."""
    units = codes.units
    gram = np.zeros((units, units), dtype=np.float64)
    for start in range(0, codes.packed.shape[1], _CHUNK_BYTES):
        part = codes.packed[:, start : start + _CHUNK_BYTES]
        count = min(codes.bits - start * 8, part.shape[1] * 8)
        q = torch.from_numpy(np.unpackbits(part, axis=1, count=count).astype(np.float32))
        gram += (q @ q.T).double().numpy()
    return gram


def _scores_from_counts(ones: np.ndarray, gram: np.ndarray | None, m: int, redundancy: Redundancy) -> torch.Tensor:
    """Spline scores of one layer from its per-unit on-counts, the units × units agreement
    matrix (``None`` for one unit) and the number of positions ``m``."""
    m = max(1, m)
    activity = ones / m
    isolation = np.minimum(activity, 1.0 - activity)
    if gram is not None and len(ones) > 1:
        ham = (ones[:, None] + ones[None, :] - 2.0 * gram) / m
        folded = np.clip(np.minimum(ham, 1.0 - ham), 0.0, 0.5)
        if redundancy == "greedy":
            return torch.from_numpy(greedy_removal(isolation, folded)[1]).float()
        np.fill_diagonal(folded, np.inf)
        red = folded.min(axis=1)
    else:
        red = np.full(len(ones), 0.5)
    return torch.from_numpy(np.minimum(isolation, red)).float()


def spline_layer_scores(codes: RegionCodes, redundancy: Redundancy = "pairwise") -> torch.Tensor:
    """s_k = min(isolation i_k, redundancy r_k) of one layer's units, in [0, 0.5].

    ``redundancy="greedy"``: removal-time scores of the greedy pass (module docstring).

    - i_k = min(a_k, 1 − a_k), a_k the fraction of probe positions where unit k is on;
    - r_k = min over k' ≠ k of min(H, 1 − H), H the normalized Hamming distance between
      the codes of k and k' (same or opposite split of the data). A layer of one unit
      has r = 0.5 (nothing to be redundant with).
    Pairwise Hamming distances come from bool matmuls over chunks of the packed codes:
    H(k, k') = (n_k + n_k' − 2·G[k, k']) / M with n_k the ones of unit k.
    """
    ones = np.bitwise_count(codes.packed).sum(axis=1, dtype=np.int64).astype(np.float64)
    gram = _pairwise_agreement(codes) if codes.units > 1 else None
    return _scores_from_counts(ones, gram, codes.bits, redundancy)


def streamed_spline_scores(
    model: nn.Module,
    probes: torch.Tensor,
    layers: Sequence[PrunableLayer],
    max_positions: int = 64,
    seed: int = 0,
    redundancy: Redundancy = "greedy",
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """The same scores as ``spline_scores(compute_region_codes(...))``, with memory independent
    of the probe count: each layer's on-counts n_k and agreement matrix G (units × units) are
    accumulated batch by batch and the codes are never kept. Exact: G is summed in float64 from
    float32 matmuls of 0/1 values over fewer than 2²⁴ positions each."""
    counts: dict[str, list] = {}

    def consume(name: str, h: torch.Tensor) -> None:
        bits = (h > 0).permute(1, 0, 2).reshape(h.shape[1], -1).float()  # (units, batch*positions)
        state = counts.setdefault(name, [np.zeros(bits.shape[0]), np.zeros((bits.shape[0],) * 2), 0])
        state[0] += bits.sum(1).double().cpu().numpy()
        for part in bits.split(1 << 23, dim=1):  # float32 sums of 0/1 stay exact below 2**24
            state[1] += (part @ part.T).double().cpu().numpy()
        state[2] += bits.shape[1]

    stream_preactivations(model, probes, layers, consume, max_positions, seed, batch_size)
    return {
        name: _scores_from_counts(ones, gram if len(ones) > 1 else None, m, redundancy)
        for name, (ones, gram, m) in counts.items()
    }


def spline_scores(codes: dict[str, RegionCodes], redundancy: Redundancy = "pairwise") -> dict[str, torch.Tensor]:
    """Data-space spline scores of every layer (ALGORITHMS §3, Shears choice)."""
    return {name: spline_layer_scores(c, redundancy) for name, c in codes.items()}


# --------------------------------------------------------------------------- weight space


@torch.no_grad()
def fold_bn(layer: PrunableLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """BN-folded hyperplanes of a layer: (normals of shape (units, fan_in), offsets).

    Normal γ_k w_k / σ_k and offset β_k + γ_k (b_k − μ_k) / σ_k with σ_k = sqrt(var + eps)
    (b the layer bias, 0 without one); without BN the layer's own weight and bias.
    Conv kernels are flattened to (units, in_channels/groups · prod(kernel)).
    """
    weight = layer.module.weight.detach().float()
    normals = weight.reshape(weight.shape[0], -1)
    bias = layer.module.bias
    offsets = bias.detach().float() if bias is not None else torch.zeros(weight.shape[0], device=weight.device)
    bn = layer.bn
    if bn is not None:
        mean = bn.running_mean.float() if bn.running_mean is not None else torch.zeros_like(offsets)
        var = bn.running_var.float() if bn.running_var is not None else torch.ones_like(offsets)
        gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(offsets)
        beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(offsets)
        scale = gamma / torch.sqrt(var + bn.eps)
        normals = normals * scale[:, None]
        offsets = beta + (offsets - mean) * scale
    return normals, offsets


def _angle_matrix(normals: torch.Tensor, groups: int) -> torch.Tensor:
    """θ[k, k'] ∈ [0, π/2]: angle between the hyperplanes of units k and k' (sign
    ignored); π/2 across conv groups (different input spaces), for zero normals and on
    the diagonal."""
    units = normals.shape[0]
    unit = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (unit @ unit.T).abs().clamp(max=1.0)
    group_of = torch.arange(units, device=normals.device) // max(1, units // groups)
    cos[group_of[:, None] != group_of[None, :]] = 0.0
    cos.fill_diagonal_(0.0)
    zero = normals.norm(dim=1) == 0
    cos[zero] = 0.0
    cos[:, zero] = 0.0
    return torch.arccos(cos)


def _smallest_angles(normals: torch.Tensor, groups: int) -> torch.Tensor:
    """Smallest angle in [0, π/2] between each unit's hyperplane and another unit's of
    the same group (units of different conv groups live in different input spaces); a lone
    unit gets π/2."""
    return _angle_matrix(normals, groups).min(dim=1).values


@torch.no_grad()
def spline_geometry_scores(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    probes: torch.Tensor,
    max_positions: int = 64,
    seed: int = 0,
    batch_size: int = 256,
    redundancy: Redundancy = "pairwise",
) -> dict[str, torch.Tensor]:
    """Weight-space spline scores (ALGORITHMS §3 alternative). **Shears choice** of formula:

    With the BN-folded hyperplane w'_k·x + b'_k = 0 (:func:`fold_bn`) and the probe data
    X at the layer input (patches for convs), the pre-activation is h_k = w'_k·x + b'_k.
    - distance of the hyperplane from the data in units of the data's spread along the
      normal: δ_k = |mean_X(h_k)| / std_X(h_k) (scale free; ∞ when h_k is constant);
    - isolation estimate ĩ_k = Φ(−δ_k): the fraction of the data beyond the hyperplane
      if the data were Gaussian along the normal (∈ [0, 0.5], the weight-space analogue
      of the data-space isolation min(a, 1 − a));
    - redundancy estimate r̃_k = θ_k / π with θ_k ∈ [0, π/2] the smallest angle between
      unit k's normal and another unit's of the same layer (and conv group), sign ignored:
      two hyperplanes through the centre of an isotropic cloud split a fraction θ/π of it
      differently (∈ [0, 0.5], analogue of min(H, 1 − H));
    - s_k = min(ĩ_k, r̃_k) ∈ [0, 0.5], comparable across layers like the data-space score;
      with ``redundancy="greedy"`` the removal-time scores of the greedy pass on θ/π.
    The mean and std of h_k over the probe positions are accumulated from the layer's
    pre-activation (the BN output in eval mode, which equals the folded map exactly).
    """
    sums: dict[str, torch.Tensor] = {}
    sq: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def consume(name: str, h: torch.Tensor) -> None:
        h = h.double()
        s = h.sum(dim=(0, 2))
        s2 = (h * h).sum(dim=(0, 2))
        sums[name] = sums[name] + s if name in sums else s
        sq[name] = sq[name] + s2 if name in sq else s2
        counts[name] = counts.get(name, 0) + h.shape[0] * h.shape[2]

    stream_preactivations(model, probes, layers, consume, max_positions, seed, batch_size)
    scores: dict[str, torch.Tensor] = {}
    for layer in layers:
        if layer.name not in sums:
            continue
        n = counts[layer.name]
        mean = sums[layer.name] / n
        var = (sq[layer.name] / n - mean * mean).clamp_min(0.0)
        std = var.sqrt()
        delta = torch.where(std > 1e-12 * (1 + mean.abs()), mean.abs() / std.clamp_min(1e-300), torch.inf)
        isolation = 0.5 * torch.erfc(delta / math.sqrt(2.0))  # Φ(−δ)
        normals, _ = fold_bn(layer)
        groups = getattr(layer.module, "groups", 1)
        if redundancy == "greedy":
            angles = _angle_matrix(normals.double(), groups).cpu().numpy() / math.pi
            _, removal = greedy_removal(isolation.cpu().numpy(), angles)
            scores[layer.name] = torch.from_numpy(removal).float()
            continue
        red = _smallest_angles(normals.double(), groups) / math.pi  # depthwise: all 0.5
        scores[layer.name] = torch.minimum(isolation.cpu(), red.cpu()).float()
    return scores


__all__ = [
    "fold_bn",
    "greedy_removal",
    "spline_geometry_scores",
    "spline_layer_scores",
    "spline_scores",
    "streamed_spline_scores",
]
