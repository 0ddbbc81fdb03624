"""Distillation over every output: the student learns the teacher's logits and regressions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.pruning.distill import DistillationLoss, kl_distillation, normalised_l2, normalised_smooth_l1
from worker.pruning.fidelity import measure_fidelity


def test_every_loss_is_zero_when_the_student_equals_the_teacher_and_positive_otherwise():
    t = torch.randn(4, 5, 3, 3)
    for loss in (lambda s, t: kl_distillation(s, t, 4.0), normalised_l2, normalised_smooth_l1):
        assert float(loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
        assert float(loss(t + torch.randn_like(t), t)) > 0.01


def test_normalised_l2_does_not_depend_on_the_output_scale():
    torch.manual_seed(0)
    t, noise = torch.randn(8, 4), torch.randn(8, 4)
    assert float(normalised_l2(t + 0.1 * noise, t)) == pytest.approx(
        float(normalised_l2(1000 * (t + 0.1 * noise), 1000 * t))
    )


def test_the_loss_sums_kinds_per_output_and_checks_counts():
    loss = DistillationLoss(["logits", "regression"], temperature=2.0)
    logits, boxes = torch.randn(3, 4), torch.randn(3, 4)
    parts = loss.per_output((logits + 1.0, boxes * 2), (logits, boxes))
    assert float(parts[0]) == pytest.approx(0.0, abs=1e-6)  # a constant shift keeps the softmax
    assert float(parts[1]) == pytest.approx(1.0)  # ‖2b − b‖² / ‖b‖²
    assert float(loss((logits + 1.0, boxes * 2), (logits, boxes))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must match"):
        loss(logits, (logits, boxes))
    with pytest.raises(ValueError):
        DistillationLoss(["logits"], temperature=0.0)


def test_a_narrow_student_trained_on_the_distillation_loss_follows_a_two_headed_teacher():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, width), nn.ReLU())
            self.cls, self.box = nn.Linear(width, 3), nn.Linear(width, 2)

        def forward(self, x):
            h = self.body(x)
            return self.cls(h), self.box(h)

    teacher, student = Net(32).eval(), Net(16)
    x = torch.randn(256, 6)
    kinds = {"0": "logits", "1": "regression"}
    before = measure_fidelity(teacher, student, [x], kinds=kinds)
    loss_fn = DistillationLoss(["logits", "regression"])
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        with torch.no_grad():
            target = teacher(x)
        loss_fn(student(x), target).backward()
        opt.step()
    after = measure_fidelity(teacher, student, [x], kinds=kinds)
    assert after["fidelity"] > before["fidelity"] + 0.2
    assert after["outputs"]["output_1"]["relative_error"] < 0.5 * before["outputs"]["output_1"]["relative_error"]


def test_a_teacher_output_near_zero_does_not_blow_the_normalised_l2_up():
    teacher = torch.zeros(2, 1, 8, 8)
    student = torch.full((2, 1, 8, 8), 0.01, requires_grad=True)
    loss = normalised_l2(student, teacher)
    assert float(loss) == pytest.approx(1.0)  # 0.01² per element over the 1e-4 mean-square floor
    loss.backward()
    assert torch.isfinite(student.grad).all()
