"""BatchNorm re-inserted for finetuning a BN-folded network and folded back afterwards."""

from __future__ import annotations

import torch
from torch import nn

from service.core.spec import (
    DEFAULT_FINETUNE_LR,
    REINSERTED_BN_FINETUNE_LR,
    EarlyBirdParams,
    FinetuneParams,
    JobSpec,
    PruneChannelsParams,
)
from tests.worker.pruning.stages.test_registry import context
from tests.worker.pruning.tiny import ConvBN1d, TinyResNet, make_data, randomize_bn, to_graph_module
from worker.pruning.stages import EngineState, runner_for
from worker.pruning.training import TrainConfig, fold_batchnorm, has_batchnorm, insert_batchnorm, train
from worker.pruning.training.reinsert_bn import INIT_FILTER_NORM, reset_inserted_batchnorm

DATA_1D = make_data((1, 16), n_train=96, n_val=48)


def folded(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    return to_graph_module(randomize_bn(model), torch.randn(1, *shape))


def convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def test_inserted_batchnorms_leave_the_outputs_unchanged_and_rescale_every_filter():
    model = folded(ConvBN1d(), (1, 16)).eval()
    assert not has_batchnorm(model)
    with torch.no_grad():
        before = model(DATA_1D.x_val)
    assert insert_batchnorm(model, DATA_1D.x_train, batch_size=32) == 2
    assert has_batchnorm(model)
    with torch.no_grad():
        after = model(DATA_1D.x_val)
    assert torch.allclose(before, after, atol=1e-4)
    for conv in convs(model):
        norms = conv.weight.flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, INIT_FILTER_NORM), atol=1e-5)


def test_folding_back_after_training_keeps_the_trained_outputs_and_the_layer_names():
    model = folded(TinyResNet(), (1, 8, 8))
    names = [name for name, _ in model.named_modules()]
    data = make_data((1, 8, 8), n_train=64, n_val=32)
    insert_batchnorm(model, data.x_train, batch_size=16)
    train(model, data, TrainConfig(epochs=2, lr=0.05, batch_size=16))
    model.eval()
    with torch.no_grad():
        trained = model(data.x_val)
    assert fold_batchnorm(model) == len(convs(model))
    with torch.no_grad():
        assert torch.allclose(model(data.x_val), trained, atol=1e-4)
    assert not has_batchnorm(model)
    assert [name for name, _ in model.named_modules()] == names
    assert all(conv.bias is not None for conv in convs(model))


def test_finetune_reinserts_batchnorm_in_a_folded_pruned_model_and_exports_none():
    dense = folded(ConvBN1d(), (1, 16))
    state = EngineState(model=folded(ConvBN1d(), (1, 16)))
    spec = JobSpec(seed=0)
    prune = PruneChannelsParams(ratio=0.5, probes=16)
    runner_for(prune).run(prune, context(spec, teacher=dense), state)
    params = FinetuneParams(epochs=2)  # reinsert_bn is on by default
    runner_for(params).run(params, context(spec, teacher=dense), state)
    assert state.extras["finetune"][0]["reinserted_batchnorms"] == 2
    assert state.extras["finetune"][0]["lr"] == REINSERTED_BN_FINETUNE_LR  # the default lr after re-insertion
    assert not has_batchnorm(state.model)
    assert not any(hasattr(m, "reinserted_bn") for m in state.model.modules())
    assert len(state.model(DATA_1D.x_val)) == len(DATA_1D.x_val)


def test_finetune_inserts_nothing_into_a_model_that_has_batchnorm():
    state = EngineState(model=ConvBN1d())
    params = FinetuneParams(epochs=1)
    runner_for(params).run(params, context(JobSpec(seed=0), teacher=ConvBN1d()), state)
    assert state.extras["finetune"][0]["reinserted_batchnorms"] == 0
    assert state.extras["finetune"][0]["lr"] == DEFAULT_FINETUNE_LR
    assert isinstance(state.model.bn1, nn.BatchNorm1d)


def test_reset_inserted_batchnorms_normalise_from_the_first_step_as_in_training_from_scratch():
    model = folded(ConvBN1d(), (1, 16))
    insert_batchnorm(model, DATA_1D.x_train, batch_size=32)
    assert reset_inserted_batchnorm(model) == 2
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 2
    for bn in bns:
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_early_bird_trains_a_model_without_batchnorm_with_it_and_returns_it_without():
    model = folded(ConvBN1d(), (1, 16))
    seen: list[bool] = []  # whether the model had BatchNorm at each forward pass
    model.register_forward_pre_hook(lambda module, inputs: seen.append(has_batchnorm(module)))
    state = EngineState(model=model)
    params = EarlyBirdParams(max_epochs=2)
    spec = JobSpec(seed=0, training={"batch_size": 32})
    runner_for(params).run(params, context(spec, teacher=None, next_params=FinetuneParams()), state)
    assert seen.count(True) >= 2 * 96 // 32  # the two epochs' training steps (96 samples) ran with it
    assert not has_batchnorm(state.model) and state.channels_removed  # folded back, then the ticket applied
