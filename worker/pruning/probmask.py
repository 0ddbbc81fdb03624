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
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from worker.io.data import DataSplits
from worker.pruning.layers import discover_layers, resolve_excludes
from worker.pruning.training import BaseCallback, FreezeMasks, TrainConfig, TrainState, evaluate, train
from worker.pruning.training.config import cosine_factor
from worker.pruning.training.devices import resolve_device
from worker.pruning.training.losses import Loss

log = logging.getLogger(__name__)

EPS = 1e-20
FINAL_TEMPERATURE = 0.03


# --------------------------------------------------------------------------- schedules


def temperature(epoch: int, epochs: int, final: float = FINAL_TEMPERATURE) -> float:
    """τ(e) = (1 − 0.03)(1 − e/E) + 0.03: from 1 at e = 0 towards 0.03."""
    return (1.0 - final) * (1.0 - epoch / max(1, epochs)) + final


def kept_fraction(epoch: int, epochs: int, target: float) -> float:
    """r(e): 1 for e < 0.16E; r_t + (1 − r_t)(1 − (e − 0.16E)/(0.44E))³ until 0.6E;
    r_t afterwards (``target`` = r_t = 1 − sparsity)."""
    e, big_e = float(epoch), float(max(1, epochs))
    if e < 0.16 * big_e:
        return 1.0
    if e < 0.6 * big_e:
        return target + (1.0 - target) * (1.0 - (e - 0.16 * big_e) / (0.44 * big_e)) ** 3
    return target


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
    f = (full + linear_sum - linear_count * cands + (len(zs) - upper).to(zs.dtype)
         + (csum[upper] - csum[lower]) - cands * (upper - lower).to(zs.dtype))  # fmt: skip
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


@torch.no_grad()
def project_scores_(
    scores: Sequence[torch.Tensor], budget: float, method: Literal["exact", "bisect"] = "exact"
) -> float:
    """Project all score tensors in place onto {0 ≤ s ≤ 1, Σ s ≤ K}: s ← clip(z − v, 0, 1)
    with one scalar v ≥ 0 shared by every tensor (what makes the budget global).
    v = 0 when Σ clip(z, 0, 1) ≤ K. Returns v. Computed in float64 on all scores at once.
    """
    if not scores:
        return 0.0
    z = torch.cat([s.detach().reshape(-1).double() for s in scores])
    if float(_kept_sum(z, 0.0)) <= budget:
        v = 0.0
    elif budget <= 0:
        v = float(z.max())
    elif method == "exact":
        v = _solve_exact(z, float(budget))
    elif method == "bisect":
        v = _solve_bisect(z, float(budget))
    else:
        raise ValueError(f"unknown projection method {method!r}")
    for s in scores:
        s.sub_(v).clamp_(0.0, 1.0)
    return v


# --------------------------------------------------------------------------- parametrization


class ProbMaskParametrization(nn.Module):
    """``weight ↦ weight ⊙ mask`` with a learnable keep-probability per weight.

    Training: relaxed Bernoulli (binary concrete) mask
    m̃ = σ((log(s+ε) − log(1−s+ε) + u) / τ), u ~ Logistic(0, 1), resampled at every
    forward; gradients reach both w and s (no straight-through estimator).
    Eval: the expected mask s (validation accuracy during ProbMask training).
    ``fixed`` (a 0/1 tensor) overrides both, used to try candidate final masks.
    """

    def __init__(self, weight: torch.Tensor, eps: float = EPS) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.ones_like(weight, dtype=torch.float32))
        self.eps = eps
        self.temperature = 1.0
        self.fixed: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            return weight * self.fixed.to(weight.dtype)
        s = self.scores
        if not self.training:
            return weight * s.to(weight.dtype)
        uniform = torch.rand_like(s)
        logistic = torch.log(uniform + self.eps) - torch.log(1.0 - uniform + self.eps)
        logits = torch.log(s + self.eps) - torch.log(1.0 - s + self.eps)
        mask = torch.sigmoid((logits + logistic) / self.temperature)
        return weight * mask.to(weight.dtype)


class ProbMaskSparsifier:
    """Global-budget unstructured sparsifier over the Conv/Linear weights of a model.

    ``sparsity`` is the final fraction of zero weights over all masked tensors
    (biases and BN parameters are never masked and do not count). ``exclude`` takes
    layer names plus ``first``/``last``.
    """

    def __init__(
        self, model: nn.Module, sparsity: float, exclude: Iterable[str] = (), eps: float = EPS,
        projection: Literal["exact", "bisect"] = "exact",
    ) -> None:  # fmt: skip
        if not 0.0 <= sparsity < 1.0:
            raise ValueError("sparsity must be in [0, 1)")
        self.model = model
        self.sparsity = sparsity
        self.eps = eps
        self.projection = projection
        layers = discover_layers(model)
        excluded = resolve_excludes(model, exclude, layers)
        self.modules: dict[str, nn.Module] = {l.name: l.module for l in layers if l.name not in excluded}
        self.n = sum(m.weight.numel() for m in self.modules.values())
        self.budget = float(self.n)
        self.temperature = 1.0
        self.last_v = 0.0
        self._final: dict[str, torch.Tensor] | None = None
        self._prepared = False

    # lifecycle ---------------------------------------------------------------------

    def prepare(self) -> ProbMaskSparsifier:
        """Register the mask parametrization on every masked weight (scores start at 1)."""
        if self._prepared:
            return self
        for module in self.modules.values():
            parametrize.register_parametrization(module, "weight", ProbMaskParametrization(module.weight, self.eps))
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

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Apply the schedules of epoch ``epoch`` (0-based) of ``epochs``: τ(e) and K(e)."""
        self.temperature = temperature(epoch, epochs)
        self.budget = kept_fraction(epoch, epochs, 1.0 - self.sparsity) * self.n
        for p in self._params().values():
            p.temperature = self.temperature

    def step(self) -> float:
        """Project all scores onto the current budget K (after every optimizer step)."""
        self.last_v = project_scores_(self.score_parameters(), self.budget, self.projection)
        return self.last_v

    # final masks -------------------------------------------------------------------

    @torch.no_grad()
    def topk_masks(self) -> dict[str, torch.Tensor]:
        """Deterministic final mask: the ``kept_target`` largest scores over all layers
        (ties: earlier layer / lower index first). Exact requested sparsity."""
        params = self._params()
        flat = torch.cat([p.scores.detach().reshape(-1).float().cpu() for p in params.values()])
        order = torch.sort(flat, descending=True, stable=True).indices[: self.kept_target]
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
        self, mode: Literal["topk", "sample"] = "topk", score_fn: Callable[[], float] | None = None,
        samples: int = 10, seed: int = 0,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Fix the final masks: ``topk`` (Shears default) or the best of ``samples``
        Bernoulli draws by ``score_fn()`` (higher is better, e.g. training accuracy),
        evaluated with each candidate mask applied."""
        if mode == "topk":
            self._final = self.topk_masks()
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
            raise ValueError(f"unknown final mask mode {mode!r}; expected 'topk' or 'sample'")
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
    weight decay, cosine over the run's epochs); τ(e) and K(e) are set at every epoch
    start; all scores are projected onto the budget after every optimizer step. The
    weights keep the loop's SGD. The Adam state goes into the stage's checkpoint.
    """

    def __init__(self, sparsifier: ProbMaskSparsifier, score_lr: float) -> None:
        self.sparsifier = sparsifier
        self.score_lr = score_lr
        self.optimizer = torch.optim.Adam(sparsifier.score_parameters(), lr=score_lr, weight_decay=0.0)

    def parameters(self) -> list[nn.Parameter]:
        return self.sparsifier.score_parameters()

    def on_epoch_start(self, state: TrainState) -> None:
        self.sparsifier.set_epoch(state.epoch, state.config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = self.score_lr * cosine_factor(state.epoch, state.config.epochs)

    def after_step(self, state: TrainState) -> None:
        self.optimizer.step()
        self.sparsifier.step()

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
    score_lr: float = 6e-3,
    exclude: Iterable[str] = (),
    final_mask: Literal["topk", "sample"] = "topk",
    final_samples: int = 10,
    projection: Literal["exact", "bisect"] = "exact",
    callbacks: Sequence = (),
    loss: Loss | None = None,
    teacher: nn.Module | None = None,
) -> dict:
    """Train ``model`` in place with ProbMask, fix the final mask and squash it.

    ``config`` is the weights' run (SGD, cosine, ``config.lr``; the reference clips the
    global gradient norm at 3 (``grad_clip``) and averages ``forward_passes`` relaxed masks
    per minibatch); the scores are trained by :class:`ProbMaskTraining`. ``callbacks``
    (progress, cancellation, checkpoints) join the run. Returns ``masks``, ``sparsity``
    (achieved), ``layers`` (per-layer sparsity), ``history`` and ``final_mask``.

    ``loss`` replaces the loop's cross-entropy (worker.pruning.distill.OutputDistillation:
    the weights also learn the dense model's outputs); a dataset without labels trains on
    that alone, and the sampled final mask is then chosen by fidelity to ``teacher`` (the
    dense model) instead of accuracy.
    """
    dev = resolve_device(config.device)
    model.to(dev)
    if data.y_train is None and final_mask == "sample" and teacher is None:
        raise ValueError("a dataset without labels chooses the sampled mask by fidelity: pass the teacher")
    sparsifier = ProbMaskSparsifier(model, sparsity, exclude, projection=projection).prepare()
    history = train(model, data, config, [ProbMaskTraining(sparsifier, score_lr), *callbacks], loss=loss)
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
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["weights"] for v in layers.values())
    return {
        "masks": masks,
        "sparsity": 1.0 - kept / max(1, total),
        "layers": layers,
        "history": history,
        "final_mask": final_mask,
    }


__all__ = [
    "ProbMaskParametrization",
    "ProbMaskSparsifier",
    "ProbMaskTraining",
    "finetune_with_masks",
    "kept_fraction",
    "project_scores_",
    "run_probmask",
    "temperature",
]
