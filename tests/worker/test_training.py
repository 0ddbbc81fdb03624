"""worker.training: the old keyword interface, mapped onto the loop plus callbacks."""

from __future__ import annotations

import torch

from tests.worker.pruning.tiny import MLP, make_data
from worker import training as legacy
from worker.pruning.training import TrainConfig, train

DATA = make_data((1, 16), n_train=96, n_val=32)


def fresh() -> MLP:
    torch.manual_seed(0)
    return MLP()


def test_the_old_keywords_train_exactly_like_the_config():
    a, b = fresh(), fresh()
    old = legacy.train(a, DATA, epochs=2, lr=0.05, batch_size=32, seed=4, weight_decay=1e-3)
    new = train(b, DATA, TrainConfig(epochs=2, lr=0.05, batch_size=32, seed=4, weight_decay=1e-3))
    assert old == new
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_old_function_callbacks_still_run_and_stop_training():
    calls = {"backward": 0, "start": []}

    def after_backward(_model) -> None:
        calls["backward"] += 1

    history = legacy.train(
        fresh(),
        DATA,
        epochs=5,
        lr=0.05,
        batch_size=32,
        after_backward=after_backward,
        on_epoch_start=lambda e, _m: calls["start"].append(e),
        on_epoch_end=lambda e, _m: e == 1,
    )
    assert len(history) == 2 and history[-1]["stopped"]
    assert calls == {"backward": 6, "start": [0, 1]}
