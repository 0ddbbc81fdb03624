"""Recovery callbacks: best-on-validation weights, warm-up, early stopping, BatchNorm recalibration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.worker.pruning.tiny import MLP, ConvBN1d, make_data
from worker.pruning.training import (
    AutoClip,
    BaseCallback,
    BatchNormRecalibration,
    Cancelled,
    EarlyStopping,
    RestoreBest,
    TrainConfig,
    TrainHooks,
    Warmup,
    evaluate,
    recalibrate_batchnorm,
    train,
)

DATA = make_data((1, 16), n_train=96, n_val=48)


def fresh(cls=MLP, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


class ScriptedAccuracy(BaseCallback):
    """Overwrites the epoch's validation accuracy with scripted values (runs first)."""

    order = -10

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_epoch_end(self, state) -> None:
        state.record["val_accuracy"] = self.values[state.epoch]


class Snapshots(BaseCallback):
    """Copies the weights at every epoch end."""

    def __init__(self) -> None:
        self.weights: list[dict] = []

    def on_epoch_end(self, state) -> None:
        self.weights.append({k: v.clone() for k, v in state.model.state_dict().items()})


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_restore_best_ends_with_the_weights_of_the_best_validation_epoch():
    model, snapshots = fresh(), Snapshots()
    best = RestoreBest(include_start=False)
    train(
        model,
        DATA,
        TrainConfig(epochs=4, lr=0.05, batch_size=32),
        [ScriptedAccuracy([0.5, 0.9, 0.7, 0.8]), snapshots, best],
    )
    assert best.best_epoch == 2 and best.best_accuracy == 0.9
    assert same(model.state_dict(), snapshots.weights[1])
    assert not same(model.state_dict(), snapshots.weights[-1])


def test_restore_best_keeps_the_starting_weights_when_no_epoch_beats_them():
    model = fresh()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    start_accuracy = evaluate(model, DATA.x_val, DATA.y_val)
    best = RestoreBest()
    train(model, DATA, TrainConfig(epochs=2, lr=0.05, batch_size=32), [ScriptedAccuracy([-1.0, -1.0]), best])
    assert best.best_epoch == 0 and best.best_accuracy == start_accuracy
    assert same(model.state_dict(), start)


def test_restore_best_survives_a_resume_and_restores_the_same_weights(tmp_path):
    scripted = [0.5, 0.9, 0.7, 0.8]

    def run(hooks: TrainHooks) -> nn.Module:
        model = fresh()
        config = TrainConfig(epochs=4, lr=0.05, batch_size=32, stage="ft")
        train(model, DATA, config, [ScriptedAccuracy(scripted), RestoreBest(), *hooks.callbacks("ft")])
        return model

    expected = run(TrainHooks())
    steps = {"n": 0}

    def cancel_in_epoch_four() -> bool:
        steps["n"] += 1
        return steps["n"] > 3 * 3

    with pytest.raises(Cancelled):
        run(TrainHooks(checkpoint_dir=tmp_path, should_cancel=cancel_in_epoch_four))
    resumed = run(TrainHooks(checkpoint_dir=tmp_path))
    assert same(resumed.state_dict(), expected.state_dict())


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    stopper = EarlyStopping(patience=2)
    history = train(
        fresh(),
        DATA,
        TrainConfig(epochs=10, lr=0.05, batch_size=32),
        [ScriptedAccuracy([0.5, 0.6, 0.6, 0.55, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]), stopper],
    )
    assert len(history) == 4 and history[-1]["stopped"] and stopper.stopped_epoch == 4


def test_early_stopping_never_runs_past_the_epoch_budget():
    history = train(
        fresh(),
        DATA,
        TrainConfig(epochs=3, lr=0.05, batch_size=32),
        [ScriptedAccuracy([0.1, 0.2, 0.3]), EarlyStopping(patience=1)],
    )
    assert len(history) == 3 and not any(h["stopped"] for h in history)


def test_warmup_raises_the_learning_rate_linearly_over_its_steps():
    seen = []

    class LearningRates(BaseCallback):
        order = 10  # after the warm-up has scaled the step's rate

        def on_step_start(self, state) -> None:
            seen.append(state.optimizer.param_groups[0]["lr"])

    train(fresh(), DATA, TrainConfig(epochs=2, lr=0.1, batch_size=32), [Warmup(4), LearningRates()])
    cosine_epoch_1 = 0.1 * (1 + math.cos(math.pi / 2)) / 2
    assert seen == pytest.approx(
        [0.025, 0.05, 0.075, 0.1 * (1 + math.cos(math.pi / 2)) / 2, cosine_epoch_1, cosine_epoch_1]
    )
    assert seen[3] == pytest.approx(cosine_epoch_1)  # step 3 is in epoch 1: full (cosine) rate


def test_warmup_changes_the_trained_weights():
    a, b = fresh(), fresh()
    train(a, DATA, TrainConfig(epochs=1, lr=0.1, batch_size=32))
    train(b, DATA, TrainConfig(epochs=1, lr=0.1, batch_size=32), [Warmup(3)])
    assert not same(a.state_dict(), b.state_dict())


def test_batchnorm_recalibration_replaces_stale_statistics_with_the_datas():
    model = fresh(ConvBN1d)
    with torch.no_grad():
        model.bn1.running_mean.fill_(5.0)
        model.bn1.running_var.fill_(9.0)
    used = recalibrate_batchnorm(model, DATA.x_train, batch_size=32)
    assert used == len(DATA.x_train)
    with torch.no_grad():
        pre = model.conv1(DATA.x_train)
    assert torch.allclose(model.bn1.running_mean, pre.mean(dim=(0, 2)), atol=1e-4)
    assert torch.allclose(model.bn1.running_var, pre.var(dim=(0, 2)), rtol=0.05)
    assert model.bn1.momentum == 0.1 and model.training  # restored


def test_batchnorm_recalibration_is_a_no_op_without_batchnorm():
    model = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, DATA.x_train) == 0
    assert same(model.state_dict(), before)


def test_the_recalibration_callback_runs_before_the_first_epoch():
    model = fresh(ConvBN1d)
    with torch.no_grad():
        model.bn2.running_mean.fill_(100.0)
    seen = []

    class FirstStep(BaseCallback):
        def on_step_start(self, state) -> None:
            if state.step == 0:
                seen.append(float(state.model.bn2.running_mean.abs().max()))

    recalibration = BatchNormRecalibration()
    train(model, DATA, TrainConfig(epochs=1, lr=0.05, batch_size=32), [recalibration, FirstStep()])
    assert recalibration.samples == len(DATA.x_train)
    assert seen[0] < 10.0


class _Grads:
    """The part of the loop's state AutoClip reads: the trained parameters."""

    def __init__(self, *params: nn.Parameter) -> None:
        self.trainable = list(params)


def _backward(param: nn.Parameter, norm: float) -> None:
    param.grad = torch.zeros_like(param)
    param.grad[0] = norm


def test_autoclip_lets_steady_gradients_of_any_scale_through():
    for scale in (1e-3, 1.0, 500.0):  # a fixed clip would stall the large ones
        param = nn.Parameter(torch.zeros(4))
        clip = AutoClip()
        for _ in range(5):
            _backward(param, scale)
            clip.after_backward(_Grads(param))
            assert float(param.grad.norm()) == pytest.approx(scale)


def test_autoclip_cuts_a_spike_to_the_percentile_of_the_norms_so_far():
    param = nn.Parameter(torch.zeros(4))
    clip = AutoClip(percentile=50, factor=1.0)
    for norm in (1.0, 2.0, 3.0, 4.0):
        _backward(param, norm)
        clip.after_backward(_Grads(param))
    _backward(param, 1000.0)
    clip.after_backward(_Grads(param))
    assert float(param.grad.norm()) == pytest.approx(3.0)  # the median of 1, 2, 3, 4, 1000
    assert clip.history[-1] == 1000.0


def test_autoclip_keeps_its_history_in_checkpoints_and_refuses_a_bad_percentile():
    clip = AutoClip()
    clip.history = [1.0, 5.0]
    restored = AutoClip()
    restored.load_state_dict(clip.state_dict())
    assert restored.history == [1.0, 5.0]
    with pytest.raises(ValueError):
        AutoClip(percentile=0)
    with pytest.raises(ValueError):
        AutoClip(factor=0.5)


def test_a_run_with_a_gradient_spike_stays_finite_under_autoclip_and_not_without():
    class Spike(BaseCallback):
        """Multiplies the gradients of one step by 1e6 (a steep first distillation step)."""

        def after_backward(self, state) -> None:
            if state.step == 3:
                for p in state.trainable:
                    p.grad.mul_(1e6)

    finals = {}
    for name, extra in (("autoclip", [AutoClip()]), ("none", [])):
        model = fresh()
        train(model, DATA, TrainConfig(epochs=2, lr=0.05, batch_size=32, seed=0), [Spike(), *extra])
        finals[name] = max(float(p.abs().max()) for p in model.parameters())
    assert finals["autoclip"] < 10.0
    assert finals["none"] > 1000.0
