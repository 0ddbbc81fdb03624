"""The training loop: determinism, resume, cancellation, hook order, cost counts."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.worker.pruning.tiny import MLP, ConvBN1d, make_data
from worker.pruning.training import (
    BaseCallback,
    Cancelled,
    Distillation,
    TrainConfig,
    TrainHooks,
    checkpoint_path,
    count_macs_params,
    evaluate,
    resolve_device,
    seed_everything,
    train,
)


class DropoutMLP(nn.Module):
    """Uses the global RNG inside forward: resume must restore the RNG state too."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def fresh(cls=DropoutMLP, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


@pytest.fixture(scope="module")
def data():
    return make_data((1, 16), n_train=96, n_val=48)


def cfg(epochs: int, seed: int = 0, stage: str = "train", **changes) -> TrainConfig:
    return TrainConfig(**{"epochs": epochs, "lr": 0.05, "batch_size": 32, "seed": seed, "stage": stage, **changes})


def run(model, data, config: TrainConfig, hooks: TrainHooks | None = None, callbacks=(), **kwargs):
    return train(model, data, config, [*callbacks, *(hooks or TrainHooks()).callbacks(config.stage)], **kwargs)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_deterministic_for_a_fixed_seed(data):
    a, b = fresh(), fresh()
    ha = train(a, data, cfg(2, seed=3))
    hb = train(b, data, cfg(2, seed=3))
    assert same_weights(a, b)
    assert ha == hb


def test_training_learns_the_toy_task_and_reports_one_record_per_epoch(data):
    model = fresh(MLP)
    before = evaluate(model, data.x_val, data.y_val)
    history = train(model, data, cfg(4))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["val_accuracy"] > max(before, 1 / 3 + 0.2)
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0.0 <= h["train_accuracy"] <= 1.0 for h in history)
    # cosine schedule: the learning rate decreases epoch after epoch
    lrs = [h["lr"] for h in history]
    assert lrs[0] == pytest.approx(0.05) and all(x > y for x, y in zip(lrs, lrs[1:], strict=False))


def test_training_resumes_from_a_checkpoint_to_the_same_result_as_an_uninterrupted_run(data, tmp_path):
    reference = fresh()
    expected = train(reference, data, cfg(4, seed=1, stage="dense"))

    steps = {"n": 0}

    def cancel_during_the_third_epoch() -> bool:
        steps["n"] += 1
        return steps["n"] > 2 * 3 + 1  # 3 steps per epoch: stop inside epoch 3

    interrupted = fresh()
    with pytest.raises(Cancelled):
        run(
            interrupted,
            data,
            cfg(4, seed=1, stage="dense"),
            TrainHooks(should_cancel=cancel_during_the_third_epoch, checkpoint_dir=tmp_path),
        )
    saved = torch.load(checkpoint_path(tmp_path, "dense"), weights_only=True)
    assert saved["epoch"] == 2 and not saved["finished"]

    resumed = fresh(seed=99)  # different initial weights: everything must come from the checkpoint
    history = run(resumed, data, cfg(4, seed=1, stage="dense"), TrainHooks(checkpoint_dir=tmp_path))
    assert same_weights(resumed, reference)
    assert history == expected


def test_a_finished_stage_is_not_trained_again_and_other_stages_ignore_its_checkpoint(data, tmp_path):
    first = fresh()
    history = run(first, data, cfg(2, stage="a"), TrainHooks(checkpoint_dir=tmp_path))
    calls = []
    again = fresh(seed=5)
    replay = run(
        again,
        data,
        cfg(2, stage="a"),
        TrainHooks(checkpoint_dir=tmp_path, should_cancel=lambda: calls.append(1) or False),
    )
    assert replay == history and same_weights(again, first) and calls == []
    other = fresh(seed=5)
    run(other, data, cfg(1, stage="b"), TrainHooks(checkpoint_dir=tmp_path))
    assert checkpoint_path(tmp_path, "b").exists()


def test_cancellation_raises_cancelled_before_the_next_step(data):
    steps = []

    def should_cancel() -> bool:
        steps.append(1)
        return len(steps) == 2

    with pytest.raises(Cancelled):
        run(fresh(), data, cfg(3), TrainHooks(should_cancel=should_cancel))
    assert len(steps) == 2


def test_progress_is_reported_every_epoch_with_the_stage_name(data):
    seen: list[dict] = []
    run(fresh(), data, cfg(3, stage="finetune"), TrainHooks(on_progress=seen.append))
    assert [p["epoch"] for p in seen] == [1, 2, 3]
    assert all(p["stage"] == "finetune" and p["epochs"] == 3 for p in seen)
    assert all({"loss", "val_accuracy", "train_accuracy"} <= p.keys() for p in seen)


def test_on_epoch_end_returning_true_stops_training_early(data):
    seen_epochs = []

    class StopAfterTwo(BaseCallback):
        def on_epoch_end(self, state) -> bool:
            seen_epochs.append(state.epoch)
            return state.epoch == 1

    history = train(fresh(), data, cfg(10), [StopAfterTwo()])
    assert seen_epochs == [0, 1]
    assert len(history) == 2 and history[-1]["stopped"]


def test_after_backward_runs_once_per_step_with_gradients_in_place(data):
    norms = []

    class GradientNorms(BaseCallback):
        def after_backward(self, state) -> None:
            norms.append(sum(float(p.grad.abs().sum()) for p in state.model.parameters() if p.grad is not None))

    train(fresh(), data, cfg(1), [GradientNorms()])
    assert len(norms) == math.ceil(96 / 32)
    assert all(n > 0 for n in norms)


def test_count_macs_params_counts_conv_and_linear_multiply_accumulates_per_sample():
    model = ConvBN1d(channels=8, classes=3)
    macs, params = count_macs_params(model, torch.zeros(5, 1, 16))
    conv1 = 8 * 16 * (1 * 3)  # out channels x positions x (in channels x kernel)
    conv2 = 16 * 16 * (8 * 3)
    fc = 3 * 16
    assert macs == conv1 + conv2 + fc
    assert params == sum(p.numel() for p in model.parameters())


def test_count_macs_accounts_for_groups():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 1))
    macs, _ = count_macs_params(model, torch.zeros(1, 4, 5, 5))
    assert macs == 4 * 25 * 9 + 6 * 25 * 4


def test_resolve_device_auto_picks_cpu_without_cuda_and_rejects_missing_cuda():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_importing_the_engine_does_not_initialise_cuda():
    code = (
        "import torch, worker.pruning.training, worker.pruning.probmask, worker.pruning.channels, worker.pipeline;"
        "print(torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_seed_everything_makes_every_rng_repeatable():
    import random

    import numpy as np

    g1 = seed_everything(7)
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=g1)))
    g2 = seed_everything(7)
    second = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=g2)))
    assert first == second


def test_distillation_pulls_the_student_towards_the_teachers_outputs(data):
    teacher = fresh(MLP)
    train(teacher, data, cfg(3))
    teacher.eval()

    def gap(student) -> float:
        with torch.no_grad():
            return float(
                torch.nn.functional.kl_div(
                    torch.log_softmax(student.eval()(data.x_val) / 4, 1),
                    torch.log_softmax(teacher(data.x_val) / 4, 1),
                    log_target=True,
                    reduction="batchmean",
                )
            )

    plain, distilled = fresh(MLP, seed=1), fresh(MLP, seed=1)
    train(plain, data, cfg(2, seed=3))
    train(distilled, data, cfg(2, seed=3), loss=Distillation(teacher, weight=1.0))
    assert gap(distilled) < gap(plain)


class Recorder(BaseCallback):
    def __init__(self, log: list, name: str, order: int = 0) -> None:
        self.log, self.name, self.order = log, name, order

    def on_train_start(self, state) -> None:
        self.log.append(("train_start", self.name))

    def on_epoch_start(self, state) -> None:
        self.log.append(("epoch_start", self.name, state.epoch))

    def on_step_start(self, state) -> None:
        self.log.append(("step_start", self.name, state.step))

    def after_backward(self, state) -> None:
        self.log.append(("after_backward", self.name, state.step))

    def after_step(self, state) -> None:
        self.log.append(("after_step", self.name, state.step))

    def on_epoch_end(self, state) -> None:
        self.log.append(("epoch_end", self.name, state.epoch, state.record["epoch"]))

    def on_train_end(self, state) -> None:
        self.log.append(("train_end", self.name))


def test_hooks_run_in_loop_order_and_callbacks_in_list_order_sorted_by_their_order(data):
    log: list = []
    recorders = [Recorder(log, "late", order=5), Recorder(log, "a"), Recorder(log, "b")]
    train(fresh(), data, cfg(1, batch_size=48), recorders)
    names = [entry[1] for entry in log if entry[0] == "train_start"]
    assert names == ["a", "b", "late"]
    only_a = [entry[0] for entry in log if entry[1] == "a"]
    assert only_a == [
        "train_start",
        "epoch_start",
        "step_start",
        "after_backward",
        "after_step",
        "step_start",
        "after_backward",
        "after_step",
        "epoch_end",
        "train_end",
    ]
    assert [entry[2] for entry in log if entry[0] == "step_start" and entry[1] == "a"] == [0, 1]


def test_a_callbacks_own_parameters_leave_the_weights_optimizer_but_get_their_gradients_zeroed(data):
    extra = nn.Parameter(torch.ones(()))
    seen = []

    class OwnParameter(BaseCallback):
        def parameters(self):
            return [extra]

        def after_backward(self, state) -> None:
            seen.append(float(extra.grad))

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = MLP()

        def forward(self, x):
            return self.body(x) * extra

    model = Scaled()
    train(model, data, cfg(1), [OwnParameter()])
    assert all(extra is not p for p in model.parameters())
    assert float(extra) == 1.0  # never stepped by the weights' SGD
    assert len(seen) == 3 and len(set(seen)) == 3  # fresh gradients each step, not accumulated


def test_the_learning_rate_follows_a_cosine_per_epoch(data):
    history = train(fresh(), data, TrainConfig(epochs=4, lr=0.1, batch_size=32))
    assert [h["lr"] for h in history] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


class _Traced(nn.Module):
    """Wraps a model and logs its forward passes under a name."""

    def __init__(self, inner: nn.Module, log: list, name: str) -> None:
        super().__init__()
        self.inner, self.log, self.name = inner, log, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return self.inner(x)


def test_the_teacher_runs_once_per_step_and_before_the_students_forward_pass(data):
    log: list[str] = []
    teacher = _Traced(fresh(MLP), log, "teacher")
    student = _Traced(fresh(MLP, seed=1), log, "student")
    config = cfg(1)
    train(student, data, config, loss=Distillation(teacher, weight=0.5))
    steps = math.ceil(len(data.x_train) / config.batch_size)
    training = log[: 2 * steps]  # then the validation passes (student only)
    assert training == ["teacher", "student"] * steps


def test_computing_the_teachers_outputs_first_changes_no_weight(data):
    teacher = fresh(MLP)
    first, late = fresh(MLP, seed=1), fresh(MLP, seed=1)
    train(first, data, cfg(2, seed=3), loss=Distillation(teacher, weight=0.7))

    class Late(Distillation):
        prepare = None  # the teacher runs inside the loss, after the student's forward pass

    train(late, data, cfg(2, seed=3), loss=Late(teacher, weight=0.7))
    assert same_weights(first, late)
