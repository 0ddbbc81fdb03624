"""From channel scores to the channels to remove (ALGORITHMS §3 guard rails).

- ``layerwise``: the same ratio in every layer.
- ``global``: one pool of all units; the lowest scores go first, skipping units of a
  layer once it is down to ``min_channels`` (or to its entry in ``floors``, a per-layer
  minimum such as a fraction of the layer's width).
Then, in both modes, every layer's kept count is rounded **up** to a multiple of
``round_to`` (never above the layer's width, never below ``min_channels``): the guard
rails can only keep more channels than the ratio asks, never fewer. Within a layer the
removed channels are always its lowest-scored ones (ties: lower index first).
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def _kept_after_guards(width: int, keep: int, min_channels: int, round_to: int) -> int:
    keep = max(keep, min_channels, 1)
    if round_to > 1:
        keep = round_to * math.ceil(keep / round_to)
    return min(keep, width)


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores.float().cpu(), stable=True).indices
    return torch.sort(order[:count]).values


def allocate(
    scores: dict[str, torch.Tensor],
    ratio: float,
    scope: Literal["global", "layerwise"] = "global",
    min_channels: int = 1,
    round_to: int = 1,
    floors: dict[str, int] | None = None,
    keep: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Indices (sorted int64) of the channels to REMOVE in each scored layer.

    ``ratio`` is the fraction of the scored channels to remove (floor of ratio × count,
    per layer in ``layerwise`` scope, over all layers in ``global`` scope), subject to the
    guard rails above. Layers absent from ``scores`` are not touched. ``floors`` raises
    ``min_channels`` per layer (both scopes). ``keep`` (``layerwise`` only) gives the number of
    channels a layer keeps instead of the ratio's (iterative pruning: the one-shot count of the
    original width, so that steps of rounding do not add up).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError("ratio must be in [0, 1)")
    if min_channels < 1 or round_to < 1:
        raise ValueError("min_channels and round_to must be >= 1")
    widths = {name: int(s.numel()) for name, s in scores.items()}
    minimum = {name: max(min_channels, int((floors or {}).get(name, 1)), 1) for name in scores}
    removed: dict[str, int] = {}
    if scope == "layerwise":
        for name, width in widths.items():
            if keep is not None and name in keep:
                removed[name] = max(0, width - int(keep[name]))
            else:
                removed[name] = int(math.floor(ratio * width + 1e-9))
    elif scope == "global":
        names = list(scores)
        total = sum(widths.values())
        target = int(math.floor(ratio * total + 1e-9))
        if names and target > 0:
            flat = torch.cat([scores[n].float().cpu().reshape(-1) for n in names])
            owner = torch.cat([torch.full((widths[n],), i, dtype=torch.long) for i, n in enumerate(names)])
            order = torch.sort(flat, stable=True).indices.tolist()
            owner_list = owner.tolist()
            counts = [0] * len(names)
            budget = [max(0, widths[n] - minimum[n]) for n in names]
            taken = 0
            for idx in order:
                li = owner_list[idx]
                if counts[li] < budget[li]:
                    counts[li] += 1
                    taken += 1
                    if taken == target:
                        break
            removed = {n: counts[i] for i, n in enumerate(names)}
        else:
            removed = {n: 0 for n in names}
    else:
        raise ValueError(f"unknown scope {scope!r}; expected 'global' or 'layerwise'")
    if keep is not None and scope != "layerwise":
        raise ValueError("keep (channels per layer) applies to the layerwise scope only")

    plan: dict[str, torch.Tensor] = {}
    for name, width in widths.items():
        keep = _kept_after_guards(width, width - removed[name], minimum[name], round_to)
        plan[name] = _lowest(scores[name], width - keep)
    return plan


__all__ = ["allocate"]
