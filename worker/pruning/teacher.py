"""The dense model as the teacher of distillation and the reference of fidelity, with its
output names and kinds (worker.pruning.outputs)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from worker.io.data import DataSplits
from worker.pruning.distill import DistillationLoss, OutputDistillation


@dataclass
class Teacher:
    """The dense model (kept on the CPU), its output ``names`` and ``kinds`` (``logits`` or
    ``regression``) and the distillation block of the spec (temperature, regression loss)."""

    model: nn.Module
    names: list[str]
    kinds: list[str]
    temperature: float = 4.0
    regression_loss: str = "l2"

    @property
    def single_logits(self) -> bool:
        """One classifier output: the plain logit distillation of the loop applies."""
        return self.kinds == ["logits"]

    def loss(self) -> DistillationLoss:
        return DistillationLoss(self.kinds, temperature=self.temperature, regression=self.regression_loss)  # type: ignore[arg-type]

    def distillation(self, device: torch.device, weight: float = 1.0) -> OutputDistillation:
        """A loss component of the loop that distils every output (Hinton et al. 2015 for
        logits; worker.pruning.distill for regression) from a copy of the dense model on
        ``device``; ``weight`` mixes in the labels' cross-entropy (ignored without labels)."""
        return OutputDistillation(copy.deepcopy(self.model).to(device).eval(), self.loss(), weight)

    def fidelity(self, model: nn.Module, data: DataSplits, batch_size: int, device: torch.device) -> dict:
        """Per-output fidelity of ``model`` to the dense model on the validation inputs."""
        from worker.pruning.fidelity import measure_fidelity

        x = data.x_val
        batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
        teacher = self.model.to(device)
        try:
            return measure_fidelity(
                teacher,
                model.to(device),
                batches,
                names=self.names,
                kinds=dict(zip(self.names, self.kinds, strict=True)),
                device=device,
            )
        finally:
            self.model.cpu()


__all__ = ["Teacher"]
