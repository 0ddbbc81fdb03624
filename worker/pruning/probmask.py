"""ProbMask: unstructured sparsity under one global budget ([PROBMASK]; ALGORITHMS §4).

Every masked weight w_i gets a keep-probability s_i ∈ [0, 1]; the constraint is on the
expected number of kept weights over all masked tensors together, Σ s_i ≤ K, so the
per-layer sparsities are learned. The class follows the lifecycle of
``torch.ao.pruning``'s sparsifiers: :meth:`ProbMaskSparsifier.prepare` (parametrize the
weights), :meth:`~ProbMaskSparsifier.step` (project the scores after each optimizer
step), :meth:`~ProbMaskSparsifier.squash_mask` (bake the final mask into plain dense
weights with zeros and remove the parametrizations, so the model exports cleanly).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.utils import parametrize

from worker.io.data import DataSplits
from worker.pruning.layers import discover_layers, resolve_excludes
from worker.pruning.training import (
    BaseCallback,
    FreezeMasks,
    TrainConfig,
    TrainState,
    evaluate,
    recalibrate_batchnorm,
    train,
)
from worker.pruning.training.config import cosine_factor
from worker.pruning.training.devices import resolve_device
from worker.pruning.training.losses import Loss

log = logging.getLogger(__name__)

EPS = 1e-20
FINAL_TEMPERATURE = 0.03
SCORE_LR_TOTAL = 20.0
"""Σ_t lr_t of the score optimizer over a job (ALGORITHMS §4, step budget): the reference's
6e-3 × 59k steps gives ≈ 176; 20 separated the scores in a review experiment on MNIST-1D."""
MAX_SCORE_LR = 1.0
"""Cap of the scaled score lr (a job of a handful of steps would otherwise take steps > 1)."""
RankBy = Literal["expected_magnitude", "score"]
FinalMask = Literal["expected_magnitude", "topk", "sample"]
FINAL_MASKS: tuple[str, ...] = get_args(FinalMask)
RANK_BY_MODE: dict[str, RankBy] = {"expected_magnitude": "expected_magnitude", "topk": "score"}
"""The deterministic final-mask modes and what they rank the weights by (:meth:`ProbMaskSparsifier.topk_masks`)."""
UNDECIDED_LOW, UNDECIDED_HIGH = 0.05, 0.95
UNDECIDED_WARNING = 0.10
"""Fraction of undecided scores (in (0.05, 0.95) when the mask is drawn) that warns in the report."""
UNDECIDED_CHOICE: dict[str, str] = {
    "expected_magnitude": "among them the larger weights were kept (final_mask expected_magnitude)",
    "topk": "among them small score differences chose the mask (final_mask expected_magnitude keeps the larger weights)",
    "sample": "among them the sampled mask is drawn at random per weight",
}
"""What the final mask did where the scores are undecided, for the warning."""
SHORT_BUDGET_STEPS = 750
"""Fewer optimizer steps than this warn in the report: on the MNIST-1D CNN at 90 % (bench/probmask_budget.py)
ProbMask + a finetune of equal length was behind global magnitude pruning finetuned the same total
epochs at 25–250 steps (29.3 vs 53.3 % at 25, 56.3 vs 63.8 % at 250) and ahead at 750 (71.8 vs 70.4 %)."""


# --------------------------------------------------------------------------- schedules


def temperature(step: float, steps: float, final: float = FINAL_TEMPERATURE) -> float:
    """τ(t) = (1 − 0.03)(1 − t/T) + 0.03: from 1 at t = 0 towards 0.03.

    Applied per optimizer step (t of T steps of the job); the reference used epochs."""
    return (1.0 - final) * (1.0 - min(step, steps) / max(1, steps)) + final


def kept_fraction(step: float, steps: float, target: float) -> float:
    """r(t): 1 for t < 0.16T; r_t + (1 − r_t)(1 − (t − 0.16T)/(0.44T))³ until 0.6T;
    r_t afterwards (``target`` = r_t = 1 − sparsity). Continuous in t (per step)."""
    e, big_e = float(step), float(max(1, steps))
    if e < 0.16 * big_e:
        return 1.0
    if e < 0.6 * big_e:
        return target + (1.0 - target) * (1.0 - (e - 0.16 * big_e) / (0.44 * big_e)) ** 3
    return target


def scaled_score_lr(
    epochs: int, steps_per_epoch: int, total: float = SCORE_LR_TOTAL, cap: float = MAX_SCORE_LR
) -> float:
    """Initial score lr whose cosine schedule sums to ``total`` over the job's steps.

    The training loop anneals the lr per epoch (lr_e = lr₀(1 + cos(πe/E))/2), and
    Σ_{e<E} (1 + cos(πe/E))/2 = (E + 1)/2, so Σ_t lr_t = lr₀ · steps_per_epoch · (E + 1)/2.
    Capped at ``cap`` (only jobs of a few dozen steps reach it).
    """
    steps = max(1, steps_per_epoch) * (max(1, epochs) + 1) / 2.0
    return min(cap, total / steps)


def undecided_fraction(scores: Sequence[torch.Tensor]) -> float:
    """Fraction of scores strictly between 0.05 and 0.95 (not yet pushed to a decision)."""
    n = sum(s.numel() for s in scores)
    if n == 0:
        return 0.0
    undecided = sum(int(((s > UNDECIDED_LOW) & (s < UNDECIDED_HIGH)).sum()) for s in scores)
    return undecided / n


# --------------------------------------------------------------------------- projection


def _kept_sum(z: torch.Tensor, v: torch.Tensor | float) -> torch.Tensor:
    return (z - v).clamp(0.0, 1.0).sum()


def _solve_exact(z: torch.Tensor, budget: float, bracket_iterations: int = 16) -> float:
    """v ≥ 0 with Σ clip(z − v, 0, 1) = K, exactly, by sorting the breakpoints.

    f(v) = Σ clip(z_i − v, 0, 1) is piecewise linear and non-increasing with breakpoints
    at z_i and z_i − 1. A few bisection passes first bracket the root in [lo, hi]. On that
    interval z_i ≥ hi + 1 contributes exactly 1, z_i ≤ lo contributes 0 and
    hi ≤ z_i ≤ lo + 1 contributes z_i − v (no breakpoint inside), so only the few z_i
    with a breakpoint inside the bracket are sorted: evaluate f at all those breakpoints
    at once with prefix sums, locate the segment that crosses K and interpolate linearly
    in it. (Sorting all n scores every step cost 0.2 s per step at VGG-16's 15 M
    weights; bench/engine_probmask.py.)
    """
    lo, hi = 0.0, float(z.max())
    full, linear_sum, linear_count = 0.0, 0.0, 0.0  # contributions of the z_i settled so far
    for _ in range(bracket_iterations):
        mid = 0.5 * (lo + hi)
        if full + linear_sum - linear_count * mid + float(_kept_sum(z, mid)) > budget:
            lo = mid
        else:
            hi = mid
        # settle what has no breakpoint inside [lo, hi] any more: later passes skip it
        ones = z >= hi + 1.0
        linear = (z >= hi) & (z <= lo + 1.0)  # empty while the bracket is wider than 1
        full += float(ones.sum())
        linear_sum, linear_count = linear_sum + float(z[linear].sum()), linear_count + float(linear.sum())
        z = z[(z > lo) & ~ones & ~linear]
    zs = torch.sort(z).values
    csum = torch.cat([zs.new_zeros(1), torch.cumsum(zs, 0)])
    cands = torch.cat([zs, zs - 1.0, zs.new_tensor([lo, hi])]).clamp(lo, hi)
    cands = torch.unique(cands)  # sorted ascending
    lower = torch.searchsorted(zs, cands, right=True)  # first z > v
    upper = torch.searchsorted(zs, cands + 1.0, right=False)  # first z >= v + 1
    f = (
        full
        + linear_sum
        - linear_count * cands
        + (len(zs) - upper).to(zs.dtype)
        + (csum[upper] - csum[lower])
        - cands * (upper - lower).to(zs.dtype)
    )
    # f is non-increasing; first candidate with f <= K (exists: f(hi) <= K)
    j = int(torch.searchsorted(-f, torch.tensor([-budget], dtype=f.dtype, device=f.device), right=False))
    j = min(max(j, 1), len(cands) - 1)
    f0, f1, c0, c1 = float(f[j - 1]), float(f[j]), float(cands[j - 1]), float(cands[j])
    if f0 == f1:
        return c1
    return c0 + (f0 - budget) * (c1 - c0) / (f0 - f1)


def _solve_bisect(z: torch.Tensor, budget: float, iterations: int = 20) -> float:
    """The reference's bisection on [0, max z]; returns the upper end (Σ ≤ K holds)."""
    lo, hi = 0.0, float(z.max())
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if float(_kept_sum(z, mid)) > budget:
            lo = mid
        else:
            hi = mid
    return hi


def _solve_sorted(z: torch.Tensor, budget: float, chunk: int = 1 << 20) -> torch.Tensor:
    """v ≥ 0 with Σ clip(z − v, 0, 1) = K (0 when Σ clip(z, 0, 1) ≤ K), exactly, as a 0-dim
    tensor on z's device, with no host read (the GPU path: :func:`_solve_exact`'s bracketing
    reads the device 80 times a step, which stalls a GPU's queue; BENCHMARKS §7).

    f(v) = Σ clip(z_i − v, 0, 1) is non-increasing with breakpoints at z_i and z_i − 1. On
    the sorted z, f at any point costs two binary searches and a prefix sum. For each family
    of breakpoints (z_i, then z_i − 1, each sorted with z) the number of breakpoints with
    f > K is counted, chunk by chunk (the memory stays a few copies of z); the last of them
    and the next one bracket the root. Intersecting the two brackets leaves an interval with
    no breakpoint inside, where f is linear: interpolate."""
    zs = torch.sort(z).values
    n = zs.numel()
    csum = torch.cat([zs.new_zeros(1), torch.cumsum(zs, 0)])

    def f(c: torch.Tensor) -> torch.Tensor:
        lower = torch.searchsorted(zs, c, right=True)  # first z > c
        upper = torch.searchsorted(zs, c + 1.0, right=False)  # first z >= c + 1
        return (n - upper) + (csum[upper] - csum[lower]) - c * (upper - lower)

    lo, hi = zs.new_zeros(1), zs[-1:].clamp_min(0.0)  # f(max z) = 0 <= K
    for shift in (0.0, 1.0):
        above = torch.zeros((), dtype=torch.long, device=zs.device)
        for start in range(0, n, chunk):
            above += (f((zs[start : start + chunk] - shift).clamp_min(0.0)) > budget).sum()
        last_above = (zs[(above - 1).clamp(0, n - 1)] - shift).clamp_min(0.0)
        first_below = (zs[above.clamp(max=n - 1)] - shift).clamp_min(0.0)
        lo = torch.where(above > 0, torch.maximum(lo, last_above), lo)
        hi = torch.where(above < n, torch.minimum(hi, first_below), hi)
    f_lo, f_hi = f(lo), f(hi)
    gap = f_lo - f_hi
    v = torch.where(gap > 0, lo + (f_lo - budget) * (hi - lo) / torch.where(gap > 0, gap, 1.0), hi)
    return torch.where(f(zs.new_zeros(1)) <= budget, torch.zeros_like(v), v).reshape(())


@torch.no_grad()
def project_scores_(
    scores: Sequence[torch.Tensor], budget: float, method: Literal["exact", "bisect"] = "exact"
) -> float:
    """Project all score tensors in place onto {0 ≤ s ≤ 1, Σ s ≤ K}: s ← clip(z − v, 0, 1)
    with one scalar v ≥ 0 shared by every tensor (what makes the budget global).
    v = 0 when Σ clip(z, 0, 1) ≤ K. Returns v. Computed in float64 on all scores at once.
    """
    return float(_project_(scores, budget, method))


@torch.no_grad()
def _project_(
    scores: Sequence[torch.Tensor], budget: float, method: Literal["exact", "bisect"] = "exact"
) -> torch.Tensor | float:
    """:func:`project_scores_` returning v as it was computed: a device tensor on a GPU
    (``exact``; no host read, so the step does not wait for the GPU), a float otherwise."""
    if method not in ("exact", "bisect"):
        raise ValueError(f"unknown projection method {method!r}")
    if not scores:
        return 0.0
    z = torch.cat([s.detach().reshape(-1) for s in scores]).double()
    v: torch.Tensor | float
    if budget <= 0:
        v = z.max().clamp_min(0.0)
    elif method == "exact" and z.device.type != "cpu":
        v = _solve_sorted(z, float(budget))
    elif float(_kept_sum(z, 0.0)) <= budget:
        v = 0.0
    elif method == "exact":
        v = _solve_exact(z, float(budget))
    else:
        v = _solve_bisect(z, float(budget))
    for s in scores:
        s.sub_(v).clamp_(0.0, 1.0)
    return v


# --------------------------------------------------------------------------- parametrization


def relaxed_bernoulli(scores: torch.Tensor, temperature: float, eps: float = EPS) -> torch.Tensor:
    """m̃ = σ((log(s+ε) − log(1−s+ε) + log(u+ε) − log(1−u+ε)) / τ), u ~ U(0, 1) ([PROBMASK] §3.2:
    the binary concrete relaxation of Bernoulli(s)); differentiable in s."""
    uniform = torch.rand_like(scores)
    logistic = torch.log(uniform + eps) - torch.log(1.0 - uniform + eps)
    logits = torch.log(scores + eps) - torch.log(1.0 - scores + eps)
    return torch.sigmoid((logits + logistic) / temperature)


class RelaxedMaskSampler:
    """Draws the relaxed masks of every layer of a sparsifier in one pass over the concatenated
    scores: one sequence of elementwise kernels per forward pass instead of one per layer (on a
    GPU the per-layer launches were most of ProbMask's step, BENCHMARKS §7).

    A layer asks for its mask when its weight is computed; a layer that asks again (the next
    forward pass) makes every layer's mask be drawn anew, so each forward pass sees one fresh
    draw, as with a per-layer draw (``forward_passes`` > 1 included)."""

    def __init__(self, parametrizations: Sequence[ProbMaskParametrization]) -> None:
        self.parametrizations = list(parametrizations)
        self._masks: list[torch.Tensor] = []
        self._handed: set[int] = set()

    def __getstate__(self) -> dict:  # a copy (deepcopy of the model) starts without the drawn masks
        return {"parametrizations": self.parametrizations, "_masks": [], "_handed": set()}

    def mask(self, index: int) -> torch.Tensor:
        if not self._masks or index in self._handed:
            self._draw()
        self._handed.add(index)
        return self._masks[index]

    def _draw(self) -> None:
        first = self.parametrizations[0]
        scores = [p.scores for p in self.parametrizations]
        flat = relaxed_bernoulli(torch.cat([s.reshape(-1) for s in scores]), first.temperature, first.eps)
        self._masks = [m.view_as(s) for m, s in zip(flat.split([s.numel() for s in scores]), scores, strict=True)]
        self._handed = set()


class ProbMaskParametrization(nn.Module):
    """``weight ↦ weight ⊙ mask`` with a learnable keep-probability per weight.

    Training: relaxed Bernoulli (binary concrete) mask (:func:`relaxed_bernoulli`),
    resampled at every forward (by the sparsifier's :class:`RelaxedMaskSampler` for all
    layers at once, when it set one); gradients reach both w and s (no straight-through
    estimator).
    Eval: ``eval_mask`` when set (the sparsifier sets the top-K mask that would be
    exported, so validation during training measures what the user gets), else the
    expected mask s. ``fixed`` (a 0/1 tensor) overrides both, used to try candidate
    final masks.
    """

    def __init__(self, weight: torch.Tensor, eps: float = EPS) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.ones_like(weight, dtype=torch.float32))
        self.eps = eps
        self.temperature = 1.0
        self.fixed: torch.Tensor | None = None
        self.eval_mask: torch.Tensor | None = None
        self.sampler: RelaxedMaskSampler | None = None  # set by the sparsifier: all layers drawn at once
        self.index = 0

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            return weight * self.fixed.to(weight.dtype)
        s = self.scores
        if not self.training:
            mask = s if self.eval_mask is None else self.eval_mask
            return weight * mask.to(weight.dtype)
        if self.sampler is not None:
            mask = self.sampler.mask(self.index)
        else:
            mask = relaxed_bernoulli(s, self.temperature, self.eps)
        return weight * mask.to(weight.dtype)


class ProbMaskSparsifier:
    """Global-budget unstructured sparsifier over the Conv/Linear weights of a model.

    ``sparsity`` is the final fraction of zero weights over all masked tensors
    (biases and BN parameters are never masked and do not count). ``exclude`` takes
    layer names plus ``first``/``last``. ``rank_by`` orders the weights for the
    deterministic final mask (:meth:`topk_masks`).
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        exclude: Iterable[str] = (),
        eps: float = EPS,
        projection: Literal["exact", "bisect"] = "exact",
        rank_by: RankBy = "expected_magnitude",
    ) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError("sparsity must be in [0, 1)")
        self.model = model
        self.sparsity = sparsity
        self.eps = eps
        self.projection = projection
        self.rank_by = rank_by
        layers = discover_layers(model)
        excluded = resolve_excludes(model, exclude, layers)
        self.modules: dict[str, nn.Module] = {
            layer.name: layer.module for layer in layers if layer.name not in excluded
        }
        self.n = sum(m.weight.numel() for m in self.modules.values())
        self.budget = float(self.n)
        self.temperature = 1.0
        self.last_v: torch.Tensor | float = 0.0
        self.steps_per_epoch = 1
        self.total_steps = 1
        self.step_index = 0
        self._final: dict[str, torch.Tensor] | None = None
        self._prepared = False

    # lifecycle ---------------------------------------------------------------------

    def prepare(self) -> ProbMaskSparsifier:
        """Register the mask parametrization on every masked weight (scores start at 1)."""
        if self._prepared:
            return self
        for module in self.modules.values():
            parametrize.register_parametrization(module, "weight", ProbMaskParametrization(module.weight, self.eps))
        params = list(self._params().values())
        sampler = RelaxedMaskSampler(params)
        for index, p in enumerate(params):
            p.sampler, p.index = sampler, index
        self._prepared = True
        return self

    def _params(self) -> dict[str, ProbMaskParametrization]:
        return {n: m.parametrizations.weight[0] for n, m in self.modules.items()}  # type: ignore[union-attr]

    def score_parameters(self) -> list[nn.Parameter]:
        """The score tensors s (train them with Adam, see :func:`run_probmask`)."""
        return [p.scores for p in self._params().values()]

    @property
    def kept_target(self) -> int:
        """Number of weights the final mask keeps: round((1 − sparsity) · n)."""
        return int(round((1.0 - self.sparsity) * self.n))

    def configure_schedule(self, epochs: int, steps_per_epoch: int) -> None:
        """Schedules run per optimizer step over ``epochs × steps_per_epoch`` steps."""
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.total_steps = max(1, int(epochs)) * self.steps_per_epoch
        self.set_step(0)

    def set_step(self, step: int) -> None:
        """Apply the schedules of optimizer step ``step`` (0-based): τ(t/T) and K(t/T)."""
        self.step_index = int(step)
        self.temperature = temperature(step, self.total_steps)
        self.budget = kept_fraction(step, self.total_steps, 1.0 - self.sparsity) * self.n
        for p in self._params().values():
            p.temperature = self.temperature

    def set_epoch(self, epoch: int, epochs: int | None = None) -> None:
        """Jump to the first step of epoch ``epoch`` (0-based; also right after a resume).
        With ``epochs`` given and no schedule configured, one step per epoch."""
        if epochs is not None and self.total_steps == 1 and self.steps_per_epoch == 1:
            self.total_steps = max(1, epochs)
        self.set_step(epoch * self.steps_per_epoch)

    def step(self) -> None:
        """Project all scores onto the current budget K (after every optimizer step),
        then move the schedules on to the next step. After the last step of an epoch the
        eval masks are refreshed (validation runs with the mask that would be exported).
        ``last_v`` keeps the shift (on a GPU a device tensor: reading it waits for the GPU)."""
        self.last_v = _project_(self.score_parameters(), self.budget, self.projection)
        self.set_step(self.step_index + 1)
        if self.step_index % self.steps_per_epoch == 0:
            self.refresh_eval_masks()

    def undecided_fraction(self) -> float:
        """Fraction of scores still between 0.05 and 0.95."""
        return undecided_fraction([s.detach() for s in self.score_parameters()])

    @torch.no_grad()
    def refresh_eval_masks(self) -> None:
        """Evaluate with the top-K mask that would be exported now (not with w·s)."""
        masks = self.topk_masks()
        for name, p in self._params().items():
            p.eval_mask = masks[name].to(p.scores.device)

    # final masks -------------------------------------------------------------------

    @torch.no_grad()
    def topk_masks(self, rank_by: RankBy | None = None) -> dict[str, torch.Tensor]:
        """Deterministic final mask: the ``kept_target`` highest-ranked weights over all layers
        (exact sparsity), ranked ``rank_by`` (default: the sparsifier's):

        - ``expected_magnitude`` (Shears default): s_i·|w_i|, the expected magnitude of the
          masked weight E[m_i·|w_i|] under the learned keep-probabilities. Where the scores have
          decided (s ≈ 1 or 0) it is the score's choice; among undecided scores the larger weight
          wins. On the MNIST-1D CNN at 90 % the scores leave two thirds of the kept weights
          undecided, and ranking by s alone ended behind global magnitude pruning
          (BENCHMARKS.md "The final mask");
        - ``score``: s_i alone ([PROBMASK]'s deterministic reading).

        Equal keys (all scores 1 before the budget falls, or all s·|w| = 0) are broken by weight
        magnitude, larger |w| kept first (global magnitude pruning among ties)."""
        params = self._params()
        flat = torch.cat([p.scores.detach().reshape(-1).float().cpu() for p in params.values()])
        magnitude = torch.cat(
            [
                self.modules[n].parametrizations.weight.original.detach().reshape(-1).abs().float().cpu()  # type: ignore[union-attr]
                for n in params
            ]
        )
        rank_by = rank_by or self.rank_by
        if rank_by == "expected_magnitude":
            key = flat.clamp(0.0, 1.0) * magnitude
        elif rank_by == "score":
            key = flat
        else:
            raise ValueError(f"unknown rank_by {rank_by!r}; expected 'expected_magnitude' or 'score'")
        by_magnitude = torch.sort(magnitude, descending=True, stable=True).indices
        by_key = torch.sort(key[by_magnitude], descending=True, stable=True).indices
        order = by_magnitude[by_key][: self.kept_target]
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[order] = True
        out, start = {}, 0
        for name, p in params.items():
            n = p.scores.numel()
            out[name] = keep[start : start + n].reshape(p.scores.shape).clone()
            start += n
        return out

    @torch.no_grad()
    def sample_masks(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One Bernoulli(s) draw of the final mask (the reference's ``sample`` mode)."""
        return {
            n: torch.bernoulli(p.scores.detach().float().cpu().clamp(0, 1), generator=generator).bool()
            for n, p in self._params().items()
        }

    def choose_final_masks(
        self,
        mode: FinalMask = "expected_magnitude",
        score_fn: Callable[[], float] | None = None,
        samples: int = 10,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Fix the final masks: ``expected_magnitude`` (Shears default: top-K of s·|w|),
        ``topk`` (top-K of s) or the best of ``samples`` Bernoulli draws by ``score_fn()``
        (higher is better, e.g. training accuracy), evaluated with each candidate mask applied."""
        if mode in RANK_BY_MODE:
            self._final = self.topk_masks(RANK_BY_MODE[mode])
        elif mode == "sample":
            gen = torch.Generator().manual_seed(seed)
            best, best_score = None, -math.inf
            for _ in range(max(1, samples)):
                cand = self.sample_masks(gen)
                if score_fn is None:
                    best = cand
                    break
                self._set_fixed(cand)
                try:
                    score = score_fn()
                finally:
                    self._set_fixed(None)
                if score > best_score:
                    best, best_score = cand, score
            self._final = best
        else:
            raise ValueError(f"unknown final mask mode {mode!r}; expected one of {', '.join(FINAL_MASKS)}")
        return self._final  # type: ignore[return-value]

    def _set_fixed(self, masks: dict[str, torch.Tensor] | None) -> None:
        for name, p in self._params().items():
            p.fixed = None if masks is None else masks[name].to(p.scores.device)

    def masks(self) -> dict[str, torch.Tensor]:
        """The final masks (bool, weight-shaped, per layer name): the chosen ones, or the
        top-K masks when none were chosen yet."""
        if self._final is None:
            if not self._prepared:
                return {n: (m.weight.detach() != 0).cpu() for n, m in self.modules.items()}
            return self.topk_masks()
        return {n: m.clone() for n, m in self._final.items()}

    @torch.no_grad()
    def squash_mask(self) -> dict[str, torch.Tensor]:
        """Bake the final masks into the weights (dense tensors with zeros), remove the
        parametrizations and score parameters; returns the masks applied."""
        masks = self.masks()
        if self._prepared:
            for name, module in self.modules.items():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                module.weight.mul_(masks[name].to(module.weight.device, module.weight.dtype))
            self._prepared = False
        self._final = masks
        return masks

    def layer_report(self) -> dict[str, dict]:
        """Per-layer ``weights``, ``kept`` and ``sparsity`` of the final masks."""
        out = {}
        for name, m in self.masks().items():
            kept = int(m.sum())
            out[name] = {"weights": m.numel(), "kept": kept, "sparsity": 1.0 - kept / max(1, m.numel())}
        return out


# --------------------------------------------------------------------------- in the training loop


class ProbMaskTraining(BaseCallback):
    """The sparsifier as a callback of the training loop ([PROBMASK] §4).

    The scores are this callback's own parameters, trained with Adam (``score_lr``, no
    weight decay, cosine over the run's epochs, like the weights' lr, so
    :func:`scaled_score_lr`'s sum holds). τ(t) and K(t) follow the run's optimizer steps
    (``state.step`` of ``state.total_steps``, set at every step start, also right after a
    resume); all scores are projected onto the budget after every optimizer step, and after
    an epoch's last step the eval masks are refreshed, so validation measures the top-K mask
    that would be exported. The weights keep the loop's SGD. The Adam state goes into the
    stage's checkpoint.
    """

    def __init__(self, sparsifier: ProbMaskSparsifier, score_lr: float) -> None:
        self.sparsifier = sparsifier
        self.score_lr = score_lr
        self.optimizer = torch.optim.Adam(sparsifier.score_parameters(), lr=score_lr, weight_decay=0.0)

    def parameters(self) -> list[nn.Parameter]:
        return self.sparsifier.score_parameters()

    def on_train_start(self, state: TrainState) -> None:
        self.sparsifier.configure_schedule(state.config.epochs, state.steps_per_epoch)
        self.sparsifier.set_step(state.step)

    def on_epoch_start(self, state: TrainState) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.score_lr * cosine_factor(state.epoch, state.config.epochs)

    def on_step_start(self, state: TrainState) -> None:
        self.sparsifier.set_step(state.step)

    def after_step(self, state: TrainState) -> None:
        self.optimizer.step()
        self.sparsifier.step()  # project onto K(t); refreshes the eval masks after an epoch's last step

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def finetune_with_masks(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    data: DataSplits,
    config: TrainConfig,
    callbacks: Sequence = (),
    *,
    loss: Loss | None = None,
) -> list[dict]:
    """Finetune with the masks fixed ([PROBMASK]: 20 epochs, SGD lr 1e-3 in the reference):
    :func:`~worker.pruning.training.train` with :class:`~worker.pruning.training.FreezeMasks`."""
    return train(model, data, config, [FreezeMasks(masks), *callbacks], loss=loss)


def run_probmask(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    sparsity: float,
    score_lr: float | None = None,
    score_lr_total: float = SCORE_LR_TOTAL,
    exclude: Iterable[str] = (),
    final_mask: FinalMask = "expected_magnitude",
    final_samples: int = 10,
    projection: Literal["exact", "bisect"] = "exact",
    callbacks: Sequence = (),
    loss: Loss | None = None,
    teacher: nn.Module | None = None,
) -> dict:
    """Train ``model`` in place with ProbMask, fix the final mask and squash it.

    ``config`` is the weights' run (SGD, cosine, ``config.lr``; the reference clips the
    global gradient norm at 3 (``grad_clip``) and averages ``forward_passes`` relaxed masks
    per minibatch); the scores are trained by :class:`ProbMaskTraining` (Adam, no weight
    decay, cosine) at ``score_lr``, by default scaled so that Σ_t lr_t over the run's steps
    is ``score_lr_total`` (:func:`scaled_score_lr`); projection after every step; τ and K
    per optimizer step; validation with the top-K mask that would be exported.
    ``callbacks`` (progress, cancellation, checkpoints) join the run.
    Returns ``masks``, ``sparsity`` (achieved), ``layers`` (per-layer sparsity),
    ``history``, ``final_mask``, ``score_lr``, ``steps``, ``undecided`` (fraction of
    scores in (0.05, 0.95) when the mask was drawn), ``bn_recalibration_samples`` (the
    BatchNorm running statistics are re-estimated under the final mask after it is fixed:
    those gathered during training saw sampled masks) and ``warnings``.

    ``loss`` replaces the loop's cross-entropy (worker.pruning.distill.OutputDistillation:
    the weights also learn the dense model's outputs); a dataset without labels trains on
    that alone, and the sampled final mask is then chosen by fidelity to ``teacher`` (the
    dense model) instead of accuracy.
    """
    dev = resolve_device(config.device)
    model.to(dev)
    if data.y_train is None and final_mask == "sample" and teacher is None:
        raise ValueError("a dataset without labels chooses the sampled mask by fidelity: pass the teacher")
    rank_by = RANK_BY_MODE.get(final_mask, "expected_magnitude")  # also the mask validation runs with
    sparsifier = ProbMaskSparsifier(model, sparsity, exclude, projection=projection, rank_by=rank_by).prepare()
    if score_lr is None:
        score_lr = scaled_score_lr(config.epochs, config.steps_per_epoch(len(data.x_train)), score_lr_total)
    history = train(model, data, config, [ProbMaskTraining(sparsifier, score_lr), *callbacks], loss=loss)
    undecided = sparsifier.undecided_fraction()
    warnings: list[str] = []
    if undecided > UNDECIDED_WARNING:
        warnings.append(
            f"probmask: {100 * undecided:.1f}% of the scores were undecided (between {UNDECIDED_LOW} and "
            f"{UNDECIDED_HIGH}) when the mask was drawn; {UNDECIDED_CHOICE[final_mask]}. A larger score_lr "
            f"decides more of them but is not better by itself (3x the default ended 1.2 points lower on "
            f'MNIST-1D at 90 %, BENCHMARKS.md "The final mask"); compare with prune_weights at the same total epochs.'
        )
        log.warning(warnings[-1])
    if sparsifier.total_steps < SHORT_BUDGET_STEPS:
        warnings.append(
            f"probmask ran {sparsifier.total_steps} optimizer steps; below {SHORT_BUDGET_STEPS} it was behind global "
            f'magnitude pruning with a finetune of the same total length in BENCHMARKS.md ("ProbMask at short '
            f'budgets"). Give it more epochs, or prune by magnitude and finetune.'
        )
    subset = slice(0, min(len(data.x_train), 2048))

    def score() -> float:
        if data.y_train is not None:
            return evaluate(model, data.x_train[subset], data.y_train[subset], device=dev)
        from worker.pruning.fidelity import measure_fidelity

        x = data.x_train
        batches = (x[i : min(i + config.batch_size, subset.stop)] for i in range(0, subset.stop, config.batch_size))
        return float(measure_fidelity(teacher, model, batches, device=dev)["fidelity"])

    sparsifier.choose_final_masks(
        final_mask,
        score_fn=score,
        samples=final_samples,
        seed=config.seed,
    )
    layers = sparsifier.layer_report()
    masks = sparsifier.squash_mask()
    # BatchNorm statistics were gathered under sampled relaxed masks; the model now runs with
    # the fixed mask (shapes32 ResNet-20 at 90 %: 54.9 % test with the stale statistics, 81.8 %
    # after this, no training; BENCHMARKS.md "The image task")
    bn_samples = recalibrate_batchnorm(model, data.x_train, batch_size=config.batch_size, seed=config.seed)
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["weights"] for v in layers.values())
    return {
        "masks": masks,
        "sparsity": 1.0 - kept / max(1, total),
        "layers": layers,
        "history": history,
        "final_mask": final_mask,
        "score_lr": score_lr,
        "steps": sparsifier.total_steps,
        "undecided": undecided,
        "bn_recalibration_samples": bn_samples,
        "warnings": warnings,
    }


__all__ = [
    "ProbMaskParametrization",
    "ProbMaskSparsifier",
    "ProbMaskTraining",
    "RelaxedMaskSampler",
    "finetune_with_masks",
    "kept_fraction",
    "project_scores_",
    "relaxed_bernoulli",
    "run_probmask",
    "scaled_score_lr",
    "temperature",
    "undecided_fraction",
]
