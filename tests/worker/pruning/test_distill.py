"""Distillation over every output: the student learns the teacher's logits and regressions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.pruning.distill import (
    DistillationLoss,
    kl_distillation,
    normalised_binary_kl,
    normalised_l2,
    normalised_smooth_l1,
)
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


def test_the_bernoulli_kl_is_zero_on_a_match_and_normalised_like_the_l2():
    torch.manual_seed(0)
    t = torch.rand(4, 1, 8, 8)
    assert float(normalised_binary_kl(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    s = 0.8 * t + 0.1
    kl = t * torch.log(t / s) + (1 - t) * torch.log((1 - t) / (1 - s))
    assert float(normalised_binary_kl(s, t)) == pytest.approx(float(kl.sum() / t.pow(2).sum()), rel=1e-4)
    empty = torch.zeros(2, 1, 8, 8)  # a page without text: the denominator's floor holds
    assert float(normalised_binary_kl(torch.full_like(empty, 0.01), empty)) == pytest.approx(
        float(-torch.log(torch.tensor(0.99))) / 1e-4, rel=1e-4
    )


def test_a_saturated_sigmoid_still_learns_from_the_bernoulli_kl_where_the_l2_gives_no_gradient():
    teacher = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gradients = {}
    for name, loss in (("kl", normalised_binary_kl), ("l2", normalised_l2)):
        z = torch.full((2, 1, 8, 8), -40.0, requires_grad=True)  # a pruned map stuck at ~0
        loss(torch.sigmoid(z), teacher).backward()
        gradients[name] = float(z.grad.abs().mean())
    assert gradients["kl"] > 1e-3 and gradients["l2"] < 1e-12


def test_student_values_outside_zero_one_are_pulled_back_with_a_finite_loss():
    t = torch.full((2, 3, 4), 0.5)
    s = torch.full((2, 3, 4), 1.5, requires_grad=True)
    loss = normalised_binary_kl(s, t)
    loss.backward()
    assert torch.isfinite(loss) and float(loss) > 0
    assert bool((s.grad > 0).all())  # gradient descent lowers the values toward [0, 1]


def test_a_sigmoid_map_distilled_by_its_kind_recovers_from_a_saturated_start_faster_than_by_l2():
    torch.manual_seed(0)

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1), nn.Sigmoid())

    teacher = net().eval()
    x = torch.randn(16, 3, 6, 6)
    with torch.no_grad():
        target = teacher(x)
    errors = {}
    for kind in ("probabilities", "regression"):
        torch.manual_seed(1)
        student = net()
        with torch.no_grad():
            student[2].bias.fill_(-20.0)  # pruning left the map saturated at ~0
        loss_fn = DistillationLoss([kind])
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
        for _ in range(40):
            opt.zero_grad()
            loss_fn(student(x), target).backward()
            opt.step()
        errors[kind] = measure_fidelity(teacher, student, [x], kinds={"0": kind})["outputs"]["output_0"]
    assert errors["probabilities"]["relative_error"] < 0.5
    assert errors["regression"]["relative_error"] > 0.9  # the L2 never leaves the saturated start
