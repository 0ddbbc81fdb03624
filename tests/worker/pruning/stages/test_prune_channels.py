"""``prune_channels`` in steps: the schedule of ratios and what the steps leave in the state."""

from __future__ import annotations

import math

import pytest
import torch

from service.core.spec import FinetuneParams, JobSpec, PruneChannelsParams
from tests.worker.pruning.stages.test_registry import context
from tests.worker.pruning.tiny import ConvBN1d
from worker.pruning.stages import EngineState, runner_for
from worker.pruning.stages.prune_channels import between_epochs, iteration_ratios

SPEC = JobSpec.model_validate({"training": {"batch_size": 32}, "seed": 1})


@pytest.mark.parametrize(("ratio", "iterations"), [(0.5, 1), (0.5, 3), (0.75, 4), (0.9, 10)])
def test_the_step_ratios_compound_to_the_requested_ratio_and_follow_a_linear_schedule(ratio, iterations):
    ratios = iteration_ratios(ratio, iterations)
    assert len(ratios) == iterations and all(0.0 < r < 1.0 for r in ratios)
    kept = 1.0
    for step, r in enumerate(ratios, start=1):
        kept *= 1.0 - r
        assert kept == pytest.approx(1.0 - ratio * step / iterations)
    assert kept == pytest.approx(1.0 - ratio)


def test_each_short_finetune_between_steps_is_a_kth_of_the_following_finetune():
    params = PruneChannelsParams(ratio=0.5, iterations=3)
    assert between_epochs(params, FinetuneParams(epochs=9), 96, 32) == 3
    assert between_epochs(params, FinetuneParams(epochs=10), 96, 32) == 4  # rounded up
    assert between_epochs(params, FinetuneParams(epochs=0), 96, 32) == 0
    runner = runner_for(params)
    assert runner.planned_epochs(params, 96, 32, FinetuneParams(epochs=9)) == 2 * 3
    assert runner.planned_epochs(PruneChannelsParams(ratio=0.5), 96, 32, FinetuneParams(epochs=9)) == 0


def test_pruning_in_three_steps_ends_at_the_one_shot_channel_count_and_trains_between_steps():
    torch.manual_seed(0)
    one_shot = EngineState(model=ConvBN1d())
    torch.manual_seed(0)
    stepped = EngineState(model=ConvBN1d())
    before = {k: v.clone() for k, v in stepped.model.state_dict().items()}
    follow = FinetuneParams(epochs=2, distill=0.5)
    ctx = context(SPEC, teacher=ConvBN1d(), next_params=follow)
    runner_for(PruneChannelsParams()).run(PruneChannelsParams(criterion="l1", probes=16), ctx, one_shot)
    params = PruneChannelsParams(criterion="l1", probes=16, iterations=3)
    runner_for(params).run(params, ctx, stepped)

    assert stepped.model.conv1.out_channels == one_shot.model.conv1.out_channels == 4
    assert stepped.model.conv2.out_channels == one_shot.model.conv2.out_channels == 8
    rows = {row["layer"]: row for row in stepped.layers}
    assert rows["conv1"]["before"] == 8 and rows["conv1"]["after"] == 4  # the whole stage, not its last step
    info = stepped.extras["iterative_pruning"]
    assert info["iterations"] == 3 and info["epochs_between"] == math.ceil(2 / 3)
    assert [s["step"] for s in info["steps"]] == [1, 2, 3]
    assert all("accuracy_finetuned" in s for s in info["steps"][:2]) and "accuracy_finetuned" not in info["steps"][2]
    assert info["steps"][0]["macs"] > info["steps"][1]["macs"] > info["steps"][2]["macs"]
    # the short finetunes trained the kept weights (the one-shot stage does not train)
    kept = stepped.model.fc.bias.detach()
    assert not torch.equal(kept, before["fc.bias"])
    assert stepped.pruned_accuracy is not None and stepped.channels_removed


def test_iterations_with_a_target_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="iterations > 1 prunes a fixed ratio"):
        PruneChannelsParams(target={"macs": 0.5}, iterations=2)
