"""Loss components of the training loop: cross-entropy and distillation from a teacher."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Loss(Protocol):
    """``loss(logits, x, y)``: the minibatch loss of the student's ``logits`` on ``(x, y)``.

    A loss may also have ``prepare(x)``: the loop calls it with each minibatch before the
    student's forward pass (a teacher's outputs are computed there, so that the teacher's
    activations are freed before the student's, kept for the backward pass, exist).
    """

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


class CrossEntropy:
    """Plain cross-entropy on the labels (the default)."""

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)


def distillation_loss(logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s knowledge-distillation loss: T² · KL(teacher ‖ student) at temperature T."""
    student = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(student, teacher_log_probs, log_target=True, reduction="batchmean") * temperature**2


class Distillation:
    """(1 − w) · cross-entropy + w · T² · KL(teacher ‖ student) at temperature T
    (knowledge distillation, Hinton et al. 2015; the dense model as teacher).

    The teacher runs in eval mode without gradients, once per minibatch (its outputs are
    reused when the loop makes several forward passes on the same minibatch).
    """

    def __init__(self, teacher: nn.Module, weight: float, temperature: float = 4.0) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError("distillation weight must be in [0, 1]")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight = weight
        self.temperature = temperature
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def _targets(self, x: torch.Tensor) -> torch.Tensor:
        if self._cached is not None and self._cached[0] is x:
            return self._cached[1]
        device = next((p.device for p in self.teacher.parameters()), x.device)
        if device != x.device:
            self.teacher.to(x.device)
        targets = F.log_softmax(self.teacher.eval()(x) / self.temperature, dim=1)
        self._cached = (x, targets)
        return targets

    def prepare(self, x: torch.Tensor) -> None:
        """The teacher's outputs for ``x``, computed before the student's forward pass."""
        if self.weight > 0:
            self._targets(x)

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hard = F.cross_entropy(logits, y)
        if self.weight == 0:
            return hard
        soft = distillation_loss(logits, self._targets(x), self.temperature)
        return (1 - self.weight) * hard + self.weight * soft


__all__ = ["CrossEntropy", "Distillation", "Loss", "distillation_loss"]
