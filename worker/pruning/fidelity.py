"""How close a pruned model stays to its dense original, output by output.

For every output: the relative L2 error ``‖s − t‖ / ‖t‖`` over the whole evaluation set,
the mean per-sample cosine similarity of the flattened outputs, and, for logit-like
outputs, the top-1 agreement (the fraction of samples, or pixels, whose arg-max class is
the dense model's). The headline fidelity of the model is its worst output's score:
agreement for logits, ``max(0, 1 − relative_error)`` otherwise — one number in [0, 1] that
is 1 for an identical model.

Metrics are accumulated batch by batch (:class:`FidelityMeter`), so evaluation works on
lazily decoded datasets. Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from worker.pruning.outputs import OutputKind, class_last, output_list, output_names, resolve_kinds


@dataclass
class _Sums:
    kind: OutputKind
    shape: list[int]
    diff_sq: float = 0.0
    ref_sq: float = 0.0
    cosine_sum: float = 0.0
    samples: int = 0
    agree: int = 0
    positions: int = 0


@dataclass
class FidelityMeter:
    """Accumulates per-output fidelity over batches of (dense outputs, pruned outputs)."""

    names: list[str] | None = None
    kinds: Mapping[str, str] | None = None
    _sums: list[_Sums] = field(default_factory=list)

    def update(self, reference: object, candidate: object) -> None:
        """Add one batch: ``reference`` from the dense model, ``candidate`` from the pruned one."""
        refs, cands = output_list(reference), output_list(candidate)
        if len(refs) != len(cands):
            raise ValueError(f"the dense model returns {len(refs)} outputs but the pruned one {len(cands)}")
        if not self._sums:
            self.names = output_names(refs, self.names)
            kinds = resolve_kinds(refs, self.names, self.kinds)
            self._sums = [_Sums(kind=k, shape=list(r.shape[1:])) for k, r in zip(kinds, refs, strict=True)]
        for sums, ref, cand in zip(self._sums, refs, cands, strict=True):
            if ref.shape != cand.shape:
                raise ValueError(f"output shapes differ: dense {list(ref.shape)}, pruned {list(cand.shape)}")
            r = ref.detach().double().reshape(len(ref), -1)
            c = cand.detach().double().reshape(len(cand), -1)
            sums.diff_sq += float((c - r).pow(2).sum())
            sums.ref_sq += float(r.pow(2).sum())
            sums.cosine_sum += float(_cosine(r, c).sum())
            sums.samples += len(r)
            if sums.kind == "logits":
                top_ref = class_last(ref.detach()).argmax(dim=1)
                top_cand = class_last(cand.detach()).argmax(dim=1)
                sums.agree += int((top_ref == top_cand).sum())
                sums.positions += int(top_ref.numel())

    def compute(self) -> dict:
        """``{"outputs": {name: {kind, shape, relative_error, cosine, agreement}}, "fidelity": f}``."""
        outputs: dict[str, dict] = {}
        scores = []
        for name, sums in zip(self.names or [], self._sums, strict=True):
            rel = math.sqrt(sums.diff_sq / sums.ref_sq) if sums.ref_sq > 0 else (0.0 if sums.diff_sq == 0 else math.inf)
            agreement = sums.agree / sums.positions if sums.positions else None
            outputs[name] = {
                "kind": sums.kind,
                "shape": sums.shape,
                "relative_error": rel,
                "cosine": sums.cosine_sum / max(1, sums.samples),
                "agreement": agreement,
            }
            scores.append(agreement if agreement is not None else max(0.0, 1.0 - rel))
        return {"outputs": outputs, "fidelity": min(scores) if scores else None, "samples": self._samples()}

    def _samples(self) -> int:
        return self._sums[0].samples if self._sums else 0


def _cosine(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity; two all-zero rows count as identical (1.0)."""
    dot = (r * c).sum(dim=1)
    norms = r.norm(dim=1) * c.norm(dim=1)
    both_zero = (r.abs().sum(dim=1) == 0) & (c.abs().sum(dim=1) == 0)
    cos = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
    return torch.where(both_zero, torch.ones_like(cos), cos)


@torch.no_grad()
def measure_fidelity(
    dense: nn.Module,
    pruned: nn.Module,
    batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
    *,
    names: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Fidelity of ``pruned`` to ``dense`` over ``batches`` of inputs (or ``(x, y)`` pairs).

    Both models run in eval mode; their previous modes are restored.
    """
    dev = torch.device(device)
    modes = dense.training, pruned.training
    dense.eval(), pruned.eval()
    meter = FidelityMeter(names=list(names) if names is not None else None, kinds=kinds)
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(dev)
            meter.update(dense(x), pruned(x))
    finally:
        dense.train(modes[0]), pruned.train(modes[1])
    return meter.compute()


DROP_TOLERANCE = 1e-9
"""Points of accuracy a drop may exceed its bound by and still pass the gate: a drop is a
difference of percentages whose last bits are rounding (8 samples of 800 measured
1.0000000000000009 against a bound of 1.0 and failed)."""


def check_bounds(fidelity: Mapping, *, min_agreement: float | None, max_relative_error: float | None) -> dict:
    """The fidelity part of the acceptance gate.

    ``min_agreement`` applies to every logit-like output (and fails when the model has none:
    the bound cannot be checked); ``max_relative_error`` to every output.
    """
    outputs = fidelity.get("outputs", {})
    checks: dict[str, dict] = {}
    if min_agreement is not None:
        agreements = [o["agreement"] for o in outputs.values() if o.get("agreement") is not None]
        worst = min(agreements) if agreements else None
        checks["min_agreement"] = {
            "bound": min_agreement,
            "measured": worst,
            "passed": worst is not None and worst >= min_agreement,
        }
        if worst is None:
            checks["min_agreement"]["reason"] = "no output is logit-like; declare a kind or use max_relative_error"
    if max_relative_error is not None:
        errors = [o["relative_error"] for o in outputs.values()]
        worst = max(errors) if errors else None
        checks["max_relative_error"] = {
            "bound": max_relative_error,
            "measured": worst,
            "passed": worst is not None and worst <= max_relative_error,
        }
    return checks
