"""Early-bird ticket detectors (ALGORITHMS §2).

Both detectors are called once per finished epoch (``step(model) -> bool``, True once a
ticket is found) and record the per-epoch distance curve for the report:
``distances[i]`` is the distance measured at epoch ``distance_epochs[i]`` (epochs are
1-based: the number of epochs trained). The first epoch has nothing to compare with and
therefore no entry. ``found_epoch`` is the epoch at which the ticket was found.

- :class:`BNScaleDetector` — [EB]: masks from the global p-quantile of |γ| over all
  BatchNorm layers, trained with an L1 penalty on γ.
- :class:`SplineDetector` — [SPLINE]: region codes on a fixed probe set; works without BN.

``window`` means the same for both: the number of earlier epochs the newest one is
compared with. Defaults are the papers' (:data:`DETECTOR_DEFAULTS`): [EB] keeps 5 masks
(window 4) at ε = 0.1; [SPLINE] compares with 3 earlier codes at 0.16. The spline
detector is calibrated (**Shears choice**): its distances start near 0.13–0.17 on small
models, so the absolute 0.16 fired at the earliest epoch the window allows on every run
(BENCHMARKS.md); a ticket needs the distance below ``relative_threshold`` × the largest
distance so far (the run's own distance scale: on a ResNet-20 the distance still rose until
epoch 4–6, so the first epochs alone understated it), and below ``threshold``, a ceiling:
0.25 by default, since on that ResNet-20 trained at [EB]'s constant lr 0.1 the codes start
near 0.3–0.4 and settle at 0.15–0.2 (the lr's noise floor), and the paper's 0.16 postponed
tickets that trained as well 4–8 epochs earlier.

Both are callbacks of the training loop (:mod:`worker.pruning.training.callbacks`):
``on_epoch_end`` steps the detector and stops training once a ticket is found;
``state_dict``/``load_state_dict`` go into the stage's checkpoint; the ``bn`` detector
also adds its L1 subgradient ``after_backward``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from torch import nn

from worker.pruning.layers import BN_TYPES, PrunableLayer, discover_layers
from worker.pruning.regions import RegionCodes, compute_region_codes, network_distance

DETECTOR_DEFAULTS: dict[str, dict[str, float | int | None]] = {
    "bn": {"window": 4, "threshold": 0.1, "relative_threshold": None},  # [EB]: 5 masks, ε 0.1
    "spline": {"window": 3, "threshold": 0.25, "relative_threshold": 0.5},  # [SPLINE]: 3 earlier codes, calibrated
}
"""Per-detector defaults: window (earlier epochs compared), threshold, relative threshold."""


class _Curve:
    """Shared bookkeeping: epoch counter, distance curve, found epoch."""

    def __init__(self) -> None:
        self.epoch = 0
        self.distances: list[float] = []
        self.distance_epochs: list[int] = []
        self.found_epoch: int | None = None

    def curve(self) -> list[dict]:
        """The distance curve as ``[{"epoch": e, "distance": d}, ...]`` (for the report)."""
        return [{"epoch": e, "distance": d} for e, d in zip(self.distance_epochs, self.distances, strict=True)]

    def _curve_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "distances": list(self.distances),
            "distance_epochs": list(self.distance_epochs),
            "found_epoch": self.found_epoch,
        }

    def _load_curve_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.distances = [float(d) for d in state["distances"]]
        self.distance_epochs = [int(e) for e in state["distance_epochs"]]
        self.found_epoch = state["found_epoch"]

    def on_epoch_end(self, state) -> bool:
        """Training-loop hook: step the detector on the epoch's weights; True stops training."""
        return self.step(state.model)


class BNScaleDetector(_Curve):
    """[EB] detector on BatchNorm scale factors.

    ``ratio`` is the channel pruning ratio p; a ticket is found at the first epoch whose
    mask is within ``threshold`` (normalized Hamming distance, default ε = 0.1) of each
    of the ``window`` earlier masks (default 4: [EB] keeps the last 5 masks).
    The curve value of an epoch is the largest distance to the older masks held.
    ``layers`` restricts the masks to the BNs of those layers (default: every BN).
    """

    def __init__(
        self,
        ratio: float,
        threshold: float = 0.1,
        window: int = 4,
        l1_lambda: float = 1e-4,
        layers: Sequence[PrunableLayer] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError("ratio must be in [0, 1)")
        if window < 1:
            raise ValueError("window must be >= 1")
        self.ratio = ratio
        self.threshold = threshold
        self.window = window
        self.l1_lambda = l1_lambda
        self._bn_names = None if layers is None else [layer.bn_name for layer in layers if layer.bn_name is not None]
        self.masks_history: deque[torch.Tensor] = deque(maxlen=window)  # the earlier masks

    def _bns(self, model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
        if self._bn_names is not None:
            modules = dict(model.named_modules())
            return [modules[n] for n in self._bn_names if n in modules]  # type: ignore[misc]
        return [m for m in model.modules() if isinstance(m, BN_TYPES) and m.weight is not None]

    @torch.no_grad()
    def add_l1_subgradient(self, model: nn.Module) -> None:
        """Add λ·sign(γ) to every BN scale's gradient."""
        for bn in self._bns(model):
            if bn.weight is not None and bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight), alpha=self.l1_lambda)

    def after_backward(self, state) -> None:
        """Training-loop hook: the L1 subgradient on the BN scales ([EB])."""
        self.add_l1_subgradient(state.model)

    @torch.no_grad()
    def layer_masks(self, model: nn.Module) -> list[torch.Tensor]:
        """Per-BN keep masks m_c = 1[|γ_c| > global p-quantile], ≥ 1 channel per layer."""
        gammas = [bn.weight.detach().abs().float().cpu() for bn in self._bns(model)]
        if not gammas:
            raise ValueError("the bn early-bird detector needs BatchNorm layers; use 'spline'")
        flat = torch.cat(gammas)
        k = int(self.ratio * flat.numel())  # number of channels at or below the threshold
        threshold = torch.sort(flat).values[k - 1] if k > 0 else flat.min() - 1
        masks = []
        for g in gammas:
            m = g > threshold
            if not bool(m.any()):
                m[g.argmax()] = True
            masks.append(m)
        return masks

    def mask(self, model: nn.Module) -> torch.Tensor:
        """All layer masks concatenated (the vector compared between epochs)."""
        return torch.cat(self.layer_masks(model))

    def step(self, model: nn.Module) -> bool:
        """Record this epoch's mask; True once a ticket has been found."""
        self.epoch += 1
        mask = self.mask(model)
        older = list(self.masks_history)
        self.masks_history.append(mask)
        if older:
            dists = [float((mask != m).float().mean()) for m in older]
            self.distances.append(max(dists))
            self.distance_epochs.append(self.epoch)
            if self.found_epoch is None and len(older) == self.window and max(dists) < self.threshold:
                self.found_epoch = self.epoch
        return self.found_epoch is not None

    def state_dict(self) -> dict:
        """Checkpoint state (tensors and primitives only)."""
        return {**self._curve_state(), "masks": [m.clone() for m in self.masks_history]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self._load_curve_state(state)
        self.masks_history = deque((m.bool() for m in state["masks"]), maxlen=self.window)


class SplineDetector(_Curve):
    """[SPLINE] detector on region codes of a fixed probe set.

    Keeps the codes of the last ``window`` epochs (default 3); a ticket is found at the
    first epoch whose largest network distance (mean over layers of the fraction of
    differing bits) to each of those ``window`` earlier epochs is below the effective
    threshold: ``threshold`` (a ceiling, default 0.25; the reference value was 0.16), lowered to
    ``relative_threshold`` × the largest distance so far when that is
    set (default 0.5; ``None``: the absolute threshold only). The curve value of an epoch
    is the largest distance to the earlier codes held; ``effective_threshold`` is
    recorded for the report.
    """

    def __init__(
        self,
        probes: torch.Tensor,
        layers: Sequence[PrunableLayer],
        threshold: float = 0.25,
        window: int = 3,
        max_positions: int = 64,
        seed: int = 0,
        batch_size: int = 256,
        relative_threshold: float | None = 0.5,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError("window must be >= 1")
        self.probes = probes
        self.layers = list(layers)
        self.threshold = threshold
        self.relative_threshold = relative_threshold
        self.effective_threshold: float = threshold
        self.window = window
        self.max_positions = max_positions
        self.seed = seed
        self.batch_size = batch_size
        self.codes_history: deque[dict[str, RegionCodes]] = deque(maxlen=window)

    def _layers_of(self, model: nn.Module) -> list[PrunableLayer]:
        modules = dict(model.named_modules())
        if all(modules.get(layer.name) is layer.module for layer in self.layers):
            return self.layers
        names = {layer.name for layer in self.layers}  # another instance of the model: same names
        return [layer for layer in discover_layers(model) if layer.name in names]

    def codes(self, model: nn.Module) -> dict[str, RegionCodes]:
        """Region codes of the tracked layers (found by name in ``model``)."""
        return compute_region_codes(
            model, self.probes, self._layers_of(model), self.max_positions, self.seed, self.batch_size
        )

    def step(self, model: nn.Module) -> bool:
        """Record this epoch's codes; True once a ticket has been found."""
        self.epoch += 1
        codes = self.codes(model)
        older = list(self.codes_history)
        self.codes_history.append(codes)
        if older:
            dists = [network_distance(codes, c) for c in older]
            self.distances.append(max(dists))
            self.distance_epochs.append(self.epoch)
            if self.relative_threshold is not None:
                scale = max(self.distances)  # the run's distance scale: the largest movement so far
                self.effective_threshold = min(self.threshold, self.relative_threshold * scale)
            if self.found_epoch is None and len(older) == self.window and max(dists) < self.effective_threshold:
                self.found_epoch = self.epoch
        return self.found_epoch is not None

    def state_dict(self) -> dict:
        """Checkpoint state (tensors and primitives only)."""
        return {
            **self._curve_state(),
            "effective_threshold": self.effective_threshold,
            "codes": [{n: c.state_dict() for n, c in codes.items()} for codes in self.codes_history],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self._load_curve_state(state)
        self.effective_threshold = float(state.get("effective_threshold", self.threshold))
        self.codes_history = deque(
            ({n: RegionCodes.from_state_dict(c) for n, c in codes.items()} for codes in state["codes"]),
            maxlen=self.window,
        )


__all__ = ["DETECTOR_DEFAULTS", "BNScaleDetector", "SplineDetector"]
