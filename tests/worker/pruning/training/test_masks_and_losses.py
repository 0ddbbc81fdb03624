"""Mask freezing and the loss components of the loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.worker.pruning.tiny import MLP, make_data
from worker.pruning.training import CrossEntropy, Distillation, FreezeMasks, TrainConfig, train

DATA = make_data((1, 16), n_train=96, n_val=32)


def test_frozen_masks_keep_masked_weights_at_zero_while_the_rest_trains():
    torch.manual_seed(0)
    model = MLP()
    gen = torch.Generator().manual_seed(1)
    masks = {"fc1": torch.rand(model.fc1.weight.shape, generator=gen) > 0.5}
    before = model.fc1.weight.detach().clone()
    train(model, DATA, TrainConfig(epochs=2, lr=0.1, batch_size=32, weight_decay=0.01), [FreezeMasks(masks)])
    weight = model.fc1.weight.detach()
    assert bool((weight[~masks["fc1"]] == 0).all())
    assert not torch.equal(weight[masks["fc1"]], before[masks["fc1"]])


def test_distillation_with_weight_zero_is_cross_entropy():
    logits, y = torch.randn(8, 3), torch.randint(3, (8,))
    teacher = MLP()
    x = torch.randn(8, 1, 16)
    assert torch.equal(Distillation(teacher, 0.0)(logits, x, y), CrossEntropy()(logits, x, y))


def test_distillation_mixes_hard_and_soft_targets_at_its_temperature():
    torch.manual_seed(0)
    teacher = MLP()
    x, y = torch.randn(8, 1, 16), torch.randint(3, (8,))
    logits = torch.randn(8, 3)
    t = 2.0
    with torch.no_grad():
        target = F.log_softmax(teacher(x) / t, 1)
    soft = F.kl_div(F.log_softmax(logits / t, 1), target, log_target=True, reduction="batchmean") * t * t
    expected = 0.3 * F.cross_entropy(logits, y) + 0.7 * soft
    assert float(Distillation(teacher, 0.7, temperature=t)(logits, x, y)) == pytest.approx(float(expected), rel=1e-5)


def test_the_teacher_runs_once_per_minibatch_even_with_several_forward_passes():
    calls = []
    teacher = MLP()
    teacher.register_forward_hook(lambda *_: calls.append(1))
    train(MLP(), DATA, TrainConfig(epochs=1, lr=0.05, batch_size=32, forward_passes=3), loss=Distillation(teacher, 0.5))
    assert len(calls) == 3  # 96 samples / 32 per minibatch
