"""Each stage runner on a tiny model: what it leaves in the engine state."""

from __future__ import annotations

import copy

import pytest
import torch

from service.core.spec import (
    DEFAULT_FINETUNE_LR,
    REINSERTED_BN_FINETUNE_LR,
    EarlyBirdParams,
    FinetuneParams,
    JobSpec,
    ProbMaskParams,
    PruneChannelsParams,
    PruneWeightsParams,
)
from tests.worker.pruning.stages.test_registry import context
from tests.worker.pruning.tiny import MLP, ConvBN1d
from worker.io.data import DataSplits
from worker.pipeline import EngineError
from worker.pruning.stages import EngineState, runner_for
from worker.pruning.stages.finetune import finetune_lr, ticket_finetune_epochs

SPEC = JobSpec.model_validate({"training": {"batch_size": 32}, "seed": 1})


def model(cls=ConvBN1d):
    torch.manual_seed(0)
    return cls()


def test_prune_channels_removes_channels_and_records_the_accuracy_after_surgery():
    state = EngineState(model=model())
    params = PruneChannelsParams(criterion="l1", ratio=0.5, probes=16)
    runner_for(params).run(params, context(SPEC, teacher=model()), state)
    assert state.channels_removed and state.model.conv1.out_channels == 4
    assert {row["layer"] for row in state.layers} >= {"conv1", "conv2"}
    assert state.pruned_accuracy is not None


def test_early_bird_without_a_following_prune_stage_draws_the_ticket_itself():
    state = EngineState(model=model())
    params = EarlyBirdParams(detector="bn", ratio=0.5, max_epochs=3, window=1, threshold=1.0)
    runner_for(params).run(params, context(SPEC, teacher=model(), next_params=FinetuneParams()), state)
    assert state.early_bird["found"] and state.early_bird["epoch"] == 2  # window 1: compared with one earlier epoch
    assert state.early_bird["window"] == 1
    assert state.channels_removed


def test_a_finetune_after_the_ticket_trains_the_rest_of_the_early_bird_schedule():
    state = EngineState(model=model())
    ticket = EarlyBirdParams(detector="bn", ratio=0.5, max_epochs=12, window=1, threshold=1.0)
    runner_for(ticket).run(ticket, context(SPEC, teacher=None, next_params=FinetuneParams()), state)
    assert state.early_bird["epochs_trained"] == 2  # window 1, threshold 1: the ticket at epoch 2
    finetune = JobSpec(pipeline=[{"early_bird": {"max_epochs": 12}}, {"finetune": {}}]).pipeline[1].params
    runner_for(finetune).run(finetune, context(SPEC, teacher=None), state)
    assert state.extras["finetune"][-1]["max_epochs"] == 10  # 12 - 2: the schedule, its cheap epochs after the ticket
    late = dict(state.early_bird, epochs_trained=12)  # no ticket within the schedule: still a quarter of it
    assert ticket_finetune_epochs(finetune, EngineState(model=state.model, early_bird=late)) == 3
    assert ticket_finetune_epochs(FinetuneParams(epochs=4), state) is None  # a budget given is kept


def test_a_ticket_trains_from_the_early_bird_lr_unless_batchnorm_is_reinserted_or_an_lr_is_given():
    ticket = {"max_epochs": 12, "epochs_trained": 2, "lr": 0.07}
    after = EngineState(model=model(), early_bird=ticket)
    assert finetune_lr(FinetuneParams(), reinserted_bn=False, state=after) == 0.07  # [EB]: the dense schedule's lr
    assert finetune_lr(FinetuneParams(), reinserted_bn=True, state=after) == REINSERTED_BN_FINETUNE_LR
    assert finetune_lr(FinetuneParams(lr=0.02), reinserted_bn=False, state=after) == 0.02
    assert finetune_lr(FinetuneParams(), reinserted_bn=False, state=EngineState(model=model())) == DEFAULT_FINETUNE_LR
    state = EngineState(model=model())
    params = EarlyBirdParams(detector="bn", max_epochs=4, window=1, threshold=1.0, lr=0.07)
    runner_for(params).run(params, context(SPEC, teacher=None, next_params=FinetuneParams()), state)
    finetune = FinetuneParams(epochs=1, distill=0.0)
    runner_for(finetune).run(finetune, context(SPEC, teacher=None), state)
    assert state.extras["finetune"][-1]["lr"] == 0.07  # what the report records


def test_early_bird_before_a_prune_stage_leaves_the_pruning_to_it():
    state = EngineState(model=model())
    params = EarlyBirdParams(detector="bn", ratio=0.5, max_epochs=2)
    runner_for(params).run(params, context(SPEC, teacher=model(), next_params=PruneChannelsParams()), state)
    assert state.early_bird["epochs_trained"] == 2 and not state.channels_removed
    assert "no ticket within max_epochs=2" in state.early_bird["warnings"][0]  # the report says so
    assert state.model.conv1.out_channels == 8


def test_probmask_leaves_masks_at_the_requested_sparsity():
    state = EngineState(model=model(MLP))
    params = ProbMaskParams(sparsity=0.75, epochs=2)
    runner_for(params).run(params, context(SPEC, teacher=model(MLP)), state)
    kept = sum(int(m.sum()) for m in state.masks.values())
    total = sum(m.numel() for m in state.masks.values())
    assert kept == round(0.25 * total)
    info = state.extras["probmask"]  # the report's probmask section, with the score lr scaled to the steps
    assert info["score_lr"] > 6e-3 and info["steps"] == 2 * 3 and 0.0 <= info["undecided"] <= 1.0
    assert any("not followed by a finetune stage" in w for w in info["warnings"])


def test_prune_weights_zeroes_the_smallest_weights_globally_and_a_finetune_keeps_them_zero():
    state = EngineState(model=model(MLP))
    dense = {name: m.weight.detach().abs().clone() for name, m in state.model.named_modules() if hasattr(m, "weight")}
    params = PruneWeightsParams(sparsity=0.75)
    runner_for(params).run(params, context(SPEC, teacher=None, next_params=FinetuneParams()), state)
    kept = sum(int(m.sum()) for m in state.masks.values())
    assert kept == round(0.25 * sum(m.numel() for m in state.masks.values()))
    smallest_kept = min(float(dense[n][m].min()) for n, m in state.masks.items())
    largest_pruned = max(float(dense[n][~m].max()) for n, m in state.masks.items() if (~m).any())
    assert smallest_kept >= largest_pruned  # one threshold over every layer, not one per layer
    assert state.pruned_accuracy is not None
    finetune = FinetuneParams(epochs=2, distill=0.0)
    runner_for(finetune).run(finetune, context(SPEC, teacher=None), state)
    for name, mask in state.masks.items():
        assert bool((dict(state.model.named_modules())[name].weight[~mask] == 0).all())


def test_probmask_followed_by_a_finetune_does_not_warn_about_a_missing_finetune():
    state = EngineState(model=model(MLP))
    params = ProbMaskParams(sparsity=0.75, epochs=1)
    runner_for(params).run(params, context(SPEC, teacher=model(MLP), next_params=FinetuneParams()), state)
    assert not any("not followed by a finetune stage" in w for w in state.extras["probmask"]["warnings"])


def test_finetune_keeps_probmask_masks_fixed_and_can_restore_its_best_epoch():
    state = EngineState(model=model(MLP))
    pm = ProbMaskParams(sparsity=0.75, epochs=1)
    runner_for(pm).run(pm, context(SPEC, teacher=model(MLP)), state)
    params = FinetuneParams(epochs=2, restore_best=True, warmup=0.2, patience=1, recalibrate_bn=True, distill=0.5)
    runner_for(params).run(params, context(SPEC, teacher=model(MLP)), state)
    assert state.finetuned
    for name, mask in state.masks.items():
        weight = dict(state.model.named_modules())[name].weight
        assert bool((weight[~mask] == 0).all())
    report = state.extras["finetune"][0]
    assert report["max_epochs"] == 2 and 0 <= report["best_epoch"] <= 2


def test_finetune_with_distillation_leaves_the_dense_teacher_untouched():
    teacher = model(MLP)
    before = copy.deepcopy(teacher.state_dict())
    state = EngineState(model=model(MLP))
    params = FinetuneParams(epochs=1, distill=0.9)
    runner_for(params).run(params, context(SPEC, teacher=teacher), state)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())


def _unlabelled(spec: JobSpec, teacher):
    """A stage context whose dataset has inputs only (a label-free job)."""
    ctx = context(spec, teacher=teacher)
    ctx.data = DataSplits(ctx.data.x_train, None, ctx.data.x_val, None, num_classes=0)
    return ctx


def test_early_bird_without_labels_is_refused_as_labels_required():
    params = EarlyBirdParams(max_epochs=2)
    with pytest.raises(EngineError, match="has none") as error:
        runner_for(params).run(params, _unlabelled(SPEC, teacher=model()), EngineState(model=model()))
    assert error.value.code == "labels-required"


def test_prune_channels_without_labels_reports_no_accuracy_and_keeps_the_output_shape():
    state = EngineState(model=model(MLP))
    params = PruneChannelsParams(criterion="l1", ratio=0.5, probes=16)
    runner_for(params).run(params, _unlabelled(SPEC, teacher=model(MLP)), state)
    assert state.channels_removed and state.pruned_accuracy is None
    assert state.model(torch.randn(2, 16)).shape == (2, 3)


def test_finetune_without_labels_distils_the_dense_outputs_and_measures_fidelity_first():
    dense = model()
    state = EngineState(model=copy.deepcopy(dense))
    ctx = _unlabelled(SPEC, teacher=dense)
    prune = PruneChannelsParams(criterion="l1", ratio=0.5, probes=16)
    runner_for(prune).run(prune, ctx, state)
    params = FinetuneParams(epochs=3, lr=0.01)
    runner_for(params).run(params, ctx, state)
    after = state.fidelity["after_pruning"]
    assert after is not None and state.finetuned
    final = ctx.reference().fidelity(state.model, ctx.data, 32, ctx.device)
    assert final["outputs"]["output_0"]["relative_error"] < after["outputs"]["output_0"]["relative_error"]


def test_finetune_recovery_by_validation_accuracy_is_refused_without_labels():
    params = FinetuneParams(epochs=2, restore_best=True)
    with pytest.raises(EngineError, match="no labels"):
        runner_for(params).run(params, _unlabelled(SPEC, teacher=model()), EngineState(model=model()))


def test_a_stored_finetune_spec_with_every_default_written_out_runs_on_a_label_free_dataset():
    stored = FinetuneParams.model_validate_json(FinetuneParams(epochs=1).model_dump_json())  # as a job reads it back
    state = EngineState(model=model())
    runner_for(stored).run(stored, _unlabelled(SPEC, teacher=model()), state)
    assert state.finetuned and state.extras["finetune"][0]["best_epoch"] is None  # no validation choice without labels


def test_probmask_without_labels_reaches_its_sparsity_by_distillation():
    dense = model()
    state = EngineState(model=copy.deepcopy(dense))
    params = ProbMaskParams(sparsity=0.8, epochs=2, final_mask="sample")
    runner_for(params).run(params, _unlabelled(SPEC, teacher=dense), state)
    kept = sum(int(m.sum()) for m in state.masks.values()) / sum(m.numel() for m in state.masks.values())
    assert kept == pytest.approx(0.2, abs=0.08) and state.pruned_accuracy is None  # sampled: budget in expectation
