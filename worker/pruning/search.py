"""Which channel ratio meets a target: bisection over one global ratio (pure Python).

Both searches assume monotonicity in the ratio (the fraction of channels removed): quality
(accuracy, agreement with the dense model) falls as the ratio grows, cost (MACs, latency)
falls as well. Under that assumption:

- a **quality bound** is met by every ratio up to some r*, and the most compression within
  the bound is the largest ratio that meets it: :func:`search_quality` bisects (0, 1) —
  ratio 0 (the dense model) meets any bound, ratio 1 (nothing left) none — starting at 0.5,
  capped at ``max_ratio``, one evaluation per candidate (each one a pruned and briefly
  finetuned copy: the expensive part, so the budget is the number of candidates);
- a **cost bound** is met by every ratio from some r* up, and the most accurate model within
  it is the smallest ratio that meets it (it keeps the most channels): :func:`search_cost`
  checks ``max_ratio`` (unreachable otherwise), then bisects down to ``resolution``.

Evaluations are callables ``ratio → point`` (a dict with at least ``passed``), so the search
knows nothing of models; every point is kept, in the order evaluated, for the report's
trade-off curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

Evaluate = Callable[[float], dict]


@dataclass
class SearchResult:
    """The points evaluated (in order, each with ``ratio`` and ``passed``) and the chosen
    ratio (0.0: no pruning — the dense model; None: no ratio meets the bound)."""

    points: list[dict] = field(default_factory=list)
    chosen: float | None = None


def _round(ratio: float) -> float:
    return round(ratio, 4)


def _point(evaluate: Evaluate, ratio: float, result: SearchResult) -> dict:
    point = {**evaluate(ratio), "ratio": ratio}
    result.points.append(point)
    return point


def search_quality(evaluate: Evaluate, *, candidates: int, max_ratio: float) -> SearchResult:
    """The largest ratio in (0, ``max_ratio``] whose point passes, by bisection with at most
    ``candidates`` evaluations (resolution 2^-candidates); ``chosen`` is None when none of the
    evaluated ratios passed."""
    if candidates < 1 or not 0.0 < max_ratio < 1.0:
        raise ValueError("need candidates >= 1 and 0 < max_ratio < 1")
    result = SearchResult()
    lo, hi = 0.0, 1.0  # lo meets the bound (the dense model), hi does not (nothing left)
    for _ in range(candidates):
        ratio = _round(min((lo + hi) / 2, max_ratio))
        if ratio <= lo:
            break
        if _point(evaluate, ratio, result)["passed"]:
            lo = ratio
            if ratio >= max_ratio:
                break
        else:
            hi = ratio
    result.chosen = lo if lo > 0 else None
    return result


def search_cost(
    evaluate: Evaluate,
    *,
    max_ratio: float,
    resolution: float = 0.01,
    dense_passes: bool = False,
) -> SearchResult:
    """The smallest ratio in (0, ``max_ratio``] whose point passes, to within ``resolution``.

    ``dense_passes``: the unpruned model already meets the bound (chosen 0.0, nothing
    evaluated). When ``max_ratio`` does not pass, ``chosen`` is None (unreachable)."""
    if not 0.0 < max_ratio < 1.0 or resolution <= 0:
        raise ValueError("need 0 < max_ratio < 1 and resolution > 0")
    result = SearchResult()
    if dense_passes:
        result.chosen = 0.0
        return result
    if not _point(evaluate, max_ratio, result)["passed"]:
        return result
    lo, hi = 0.0, max_ratio  # lo does not meet the bound (the dense model), hi does
    for _ in range(max(0, math.ceil(math.log2(max_ratio / resolution)))):
        ratio = _round((lo + hi) / 2)
        if ratio <= lo or ratio >= hi:
            break
        if _point(evaluate, ratio, result)["passed"]:
            hi = ratio
        else:
            lo = ratio
    result.chosen = hi
    return result


__all__ = ["SearchResult", "search_cost", "search_quality"]
