"""Distillation losses over every output of a model: the dense model is the teacher.

- Logit-like outputs: Hinton et al. (2015), *Distilling the Knowledge in a Neural Network*:
  ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` over the class dimension (dim 1), averaged over
  samples and, for dense predictions, over positions.
- Probability outputs (values in [0, 1] after a sigmoid or softmax): the Bernoulli KL
  ``Σ KL(t ‖ s)`` per element (binary cross-entropy with soft targets, less the teacher's
  entropy), divided by ``‖t‖²`` like the L2. Its gradient at the sigmoid's input is
  ``(s − t)/‖t‖²``, where the L2's is ``2(s − t)·s(1 − s)/‖t‖²``, which vanishes when
  pruning leaves the sigmoid saturated (a text map stuck at 0).
- Regression outputs and feature maps: a scale-normalised L2, ``‖s − t‖² / ‖t‖²`` per batch
  (the squared relative error, so boxes in pixels and embeddings near unit norm weigh the
  same), or a smooth-L1 on outputs divided by the teacher's standard deviation.

The total is the mean of the per-output losses, so adding an output does not change the
scale of the learning rate that suits a model. Pure torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from worker.pruning.outputs import OutputKind, class_last, output_list

RegressionLoss = Literal["l2", "smooth_l1"]
_EPS = 1e-12
_MEAN_SQUARE_FLOOR = 1e-4
_TINY = 1e-30  # log's gradient 1/s stays exact down to here: saturated sigmoids still learn
_PROBABILITY_EPS = 1e-6


def kl_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tempered KL over dim 1, scaled by T² (Hinton et al. 2015)."""
    s = F.log_softmax(class_last(student) / temperature, dim=1)
    t = F.log_softmax(class_last(teacher) / temperature, dim=1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def normalised_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``‖s − t‖² / ‖t‖²`` over the batch: the squared relative error, scale-free.

    The denominator is floored at a mean square of ``1e-4`` per element, so a teacher output
    that is almost zero on a batch (a text-detection map on an image without text) does not
    turn the loss into a huge, exploding gradient."""
    scale = teacher.detach().pow(2).sum().clamp_min(_MEAN_SQUARE_FLOOR * teacher.numel()).clamp_min(_EPS)
    return (student - teacher).pow(2).sum() / scale


def normalised_binary_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``Σ KL(Bern(t) ‖ Bern(s)) / ‖t‖²`` over the batch: the Bernoulli KL per element, with
    the normalised L2's denominator (floored the same way), so declaring an output
    ``probabilities`` instead of ``regression`` keeps the scale a learning rate suits.

    Student values outside [0, 1] (an output wrongly read as probabilities) add their
    squared distance to the interval, so the loss pulls them back instead of turning NaN."""
    t = teacher.detach().clamp(0.0, 1.0)
    inside = student.clamp(_TINY, 1.0 - _PROBABILITY_EPS)
    outside = (student - student.clamp(0.0, 1.0)).pow(2).sum()
    scale = t.pow(2).sum().clamp_min(_MEAN_SQUARE_FLOOR * t.numel()).clamp_min(_EPS)
    return (_bernoulli_kl(t, inside).sum() + outside) / scale


def _bernoulli_kl(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Element-wise ``KL(Bern(t) ‖ Bern(s))`` for ``s`` strictly inside (0, 1)."""
    return torch.special.xlogy(t, t) - t * torch.log(s) + torch.special.xlogy(1 - t, 1 - t) - (1 - t) * torch.log1p(-s)


def normalised_smooth_l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 of outputs divided by the teacher's standard deviation over the batch."""
    scale = teacher.detach().float().std().clamp_min(1e-6) if teacher.numel() > 1 else torch.ones(())
    return F.smooth_l1_loss(student / scale, teacher / scale)


class DistillationLoss(nn.Module):
    """Mean over outputs of the loss that suits each output's kind."""

    def __init__(
        self, kinds: Sequence[OutputKind], *, temperature: float = 4.0, regression: RegressionLoss = "l2"
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        if regression not in ("l2", "smooth_l1"):
            raise ValueError(f"unknown regression loss {regression!r}")
        self.kinds = list(kinds)
        self.temperature = temperature
        self.regression = regression

    def per_output(self, student: object, teacher: object) -> list[torch.Tensor]:
        """One loss per output, in output order."""
        students, teachers = output_list(student), output_list(teacher)
        if not len(students) == len(teachers) == len(self.kinds):
            raise ValueError(
                f"{len(students)} student outputs, {len(teachers)} teacher outputs, "
                f"{len(self.kinds)} kinds: they must match"
            )
        losses = []
        for kind, s, t in zip(self.kinds, students, teachers, strict=True):
            t = t.detach().to(s.dtype)
            if kind == "logits":
                losses.append(kl_distillation(s, t, self.temperature))
            elif kind == "probabilities":
                losses.append(normalised_binary_kl(s, t))
            elif self.regression == "l2":
                losses.append(normalised_l2(s, t))
            else:
                losses.append(normalised_smooth_l1(s, t))
        return losses

    def forward(self, student: object, teacher: object) -> torch.Tensor:
        return torch.stack(self.per_output(student, teacher)).mean()


class OutputDistillation:
    """A loss component of the training loop (worker.pruning.training.losses.Loss): the
    student's outputs against the teacher's, every output, through ``loss``. With labels and
    ``weight`` < 1 the first output's cross-entropy is mixed in: ``(1 − w)·CE + w·distill``;
    without labels (``y`` None) the loss is the distillation alone.

    The teacher runs in eval mode without gradients, once per minibatch (reused when the loop
    makes several forward passes on one minibatch, as ProbMask does).
    """

    def __init__(self, teacher: nn.Module, loss: DistillationLoss, weight: float = 1.0) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError("distillation weight must be in [0, 1]")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.loss, self.weight = loss, weight
        self._cached: tuple[torch.Tensor, object] | None = None

    @torch.no_grad()
    def _targets(self, x: torch.Tensor) -> object:
        if self._cached is not None and self._cached[0] is x:
            return self._cached[1]
        device = next((p.device for p in self.teacher.parameters()), x.device)
        if device != x.device:
            self.teacher.to(x.device)
        targets = self.teacher.eval()(x)
        self._cached = (x, targets)
        return targets

    def prepare(self, x: torch.Tensor) -> None:
        """The teacher's outputs for ``x``, computed before the student's forward pass (its
        activations are freed before the student's, kept for the backward pass, exist)."""
        self._targets(x)

    def __call__(self, outputs, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        soft = self.loss(outputs, self._targets(x))
        if y is None or self.weight >= 1.0:
            return soft
        hard = F.cross_entropy(output_list(outputs)[0], y)
        return (1 - self.weight) * hard + self.weight * soft
