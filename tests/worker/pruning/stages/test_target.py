"""``prune_channels.target`` on tiny models: the search meets its bound and says what it explored."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from service.core.spec import FinetuneParams, JobSpec, PruneChannelsParams
from tests.worker.pruning.stages.test_registry import context
from tests.worker.pruning.tiny import ConvBN1d
from worker.pipeline import EngineError
from worker.pruning.stages import EngineState, runner_for
from worker.pruning.stages.prune_channels import prune_model
from worker.pruning.training import Cancelled, TrainConfig, TrainHooks, count_macs_params, evaluate, train

SPEC = JobSpec.model_validate({"training": {"batch_size": 32}, "seed": 1})


def trained(cls=ConvBN1d) -> nn.Module:
    torch.manual_seed(0)
    model = cls()
    train(model, context(SPEC, teacher=None).data, TrainConfig(epochs=5, lr=0.1, batch_size=32))
    return model


def search(model: nn.Module, target: dict, **kw) -> EngineState:
    params = PruneChannelsParams(criterion="l1", probes=16, target=target)
    ctx = context(SPEC, teacher=copy.deepcopy(model), next_params=FinetuneParams(), **kw)
    state = EngineState(model=copy.deepcopy(model))
    runner_for(params).run(params, ctx, state)
    return state


def macs_fraction(model: nn.Module, dense: nn.Module) -> float:
    x = context(SPEC, teacher=None).data.x_val[:1]
    return count_macs_params(model, x)[0] / count_macs_params(dense, x)[0]


def test_a_macs_target_prunes_to_the_smallest_ratio_within_the_bound():
    dense = trained()
    state = search(dense, {"macs": 0.4})
    info = state.extras["target"]
    chosen = info["chosen_ratio"]
    assert macs_fraction(state.model, dense) <= 0.4 and state.channels_removed
    # one resolution step less compression is over the bound: the search kept every channel it could
    smaller = copy.deepcopy(dense)
    prune_model(smaller, PruneChannelsParams(criterion="l1", probes=16, ratio=chosen - 0.01), context(SPEC, None))
    assert macs_fraction(smaller, dense) > 0.4
    assert [p["chosen"] for p in info["points"]].count(True) == 1
    assert all(p["passed"] == (p["macs_fraction"] <= 0.4) for p in info["points"])


def half_dead() -> nn.Module:
    """A trained model half of whose hidden channels output exactly zero: removing them is free."""
    dense = trained()
    with torch.no_grad():
        for conv, bn in ((dense.conv1, dense.bn1), (dense.conv2, dense.bn2)):
            dead = slice(0, conv.out_channels // 2)
            conv.weight[dead] = 0
            conv.bias[dead] = 0
            bn.weight[dead] = 0
            bn.bias[dead] = 0
    return dense


def test_max_accuracy_drop_takes_the_largest_ratio_within_the_bound_where_half_the_channels_are_dead():
    state = search(half_dead(), {"max_accuracy_drop": 0.0, "steps": 0, "candidates": 5})
    info = state.extras["target"]
    assert info["chosen_ratio"] >= 0.5  # every dead channel goes
    passed = [p["ratio"] for p in info["points"] if p["passed"]]
    assert info["chosen_ratio"] == max(passed)
    assert all(p["measured"] > 0.0 for p in info["points"] if p["ratio"] > info["chosen_ratio"])
    assert state.pruned_accuracy * 100 >= info["reference_accuracy"]  # within a bound of 0 points


def test_a_fidelity_bound_keeps_every_channel_that_changes_the_outputs_and_reports_fidelity_after_pruning():
    state = search(half_dead(), {"max_relative_error": 1e-5, "steps": 0, "candidates": 4})
    info = state.extras["target"]
    assert info["chosen_ratio"] == 0.5  # exactly the dead channels: any live one changes the logits
    assert all(p["passed"] == (p["ratio"] <= 0.5) for p in info["points"])
    assert state.fidelity["after_pruning"]["fidelity"] == pytest.approx(1.0, abs=1e-5)


def test_the_short_finetunes_of_a_quality_search_report_progress_and_can_be_cancelled():
    dense = trained()
    events: list[dict] = []
    state = search(dense, {"max_accuracy_drop": 2.0, "steps": 3, "candidates": 2}, hooks=TrainHooks(events.append))
    assert {e["stage"] for e in events} == {"0-stage.candidate-1", "0-stage.candidate-2"}
    info = state.extras["target"]
    assert all(p.get("accuracy") is not None and p.get("latency_ms") for p in info["points"])
    chosen = next(p for p in info["points"] if p["chosen"])  # the stage continues from the chosen candidate
    data = context(SPEC, teacher=None).data
    assert 100 * evaluate(state.model, data.x_val, data.y_val) == pytest.approx(chosen["accuracy"])
    assert 100 * state.pruned_accuracy == pytest.approx(chosen["accuracy_pruned"])
    assert state.finetuned  # the report compares the trained candidate, even with no finetune stage after
    with pytest.raises(Cancelled):
        search(dense, {"max_accuracy_drop": 2.0, "steps": 3}, hooks=TrainHooks(should_cancel=lambda: True))


class WideMLP(nn.Module):
    """Latency that pruning visibly cuts: two 1024-wide hidden layers (compute, not the runtime's
    per-call overhead, dominates: at 512 the model pruned by 90 % measured 0.043 ms against a bound
    of 0.040 set from a 0.119 ms dense timing)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


def test_a_latency_target_chooses_a_model_whose_measured_latency_meets_it():
    torch.manual_seed(0)
    dense = WideMLP()
    probe = search(dense, {"latency_ms": 1e3, "batch": 16})  # met by the dense model: nothing pruned
    assert probe.extras["target"]["chosen_ratio"] == 0.0 and not probe.channels_removed
    dense_ms = probe.extras["target"]["dense"]["latency_ms"]  # the bound is set from this machine's own timing
    state = search(dense, {"latency_ms": dense_ms / 3, "batch": 16})
    info = state.extras["target"]
    chosen = next(p for p in info["points"] if p["chosen"])
    assert 0 < info["chosen_ratio"] < 1 and chosen["latency_ci95_ms"][1] <= dense_ms / 3
    assert all(p["passed"] == (p["latency_ci95_ms"][1] <= dense_ms / 3) for p in info["points"])
    assert state.model.fc1.out_features < 1024


def test_a_cost_target_out_of_reach_fails_the_job_with_its_own_code():
    with pytest.raises(EngineError) as error:
        search(trained(), {"macs": 0.01, "max_ratio": 0.2})
    assert error.value.code == "target-unreachable" and "max_ratio 0.2" in str(error.value)


def test_the_search_plans_its_short_finetunes_as_half_the_following_finetune_unless_steps_are_given():
    runner = runner_for(PruneChannelsParams())
    quality = PruneChannelsParams(target={"max_accuracy_drop": 1.0})
    assert runner.planned_epochs(quality, 1000, 100, FinetuneParams(epochs=10)) == 5 * 5
    assert runner.planned_epochs(quality, 1000, 100, None) == 5 * 75  # the default finetune: 1500 steps, 150 epochs
    stepped = PruneChannelsParams(target={"max_accuracy_drop": 1.0, "steps": 25, "candidates": 3})
    assert runner.planned_epochs(stepped, 1000, 100, FinetuneParams(epochs=10)) == 3 * 3
    assert runner.planned_epochs(PruneChannelsParams(target={"macs": 0.3}), 1000, 100, FinetuneParams()) == 0
    assert runner.planned_epochs(PruneChannelsParams(), 1000, 100, FinetuneParams()) == 0


def test_a_search_run_again_on_its_checkpoints_resumes_every_candidate_to_the_same_model(tmp_path):
    dense = trained()
    target = {"max_accuracy_drop": 2.0, "steps": 6, "candidates": 3}
    first = search(dense, target, hooks=TrainHooks(checkpoint_dir=tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [f"0-stage.candidate-{k}.pt" for k in (1, 2, 3)]
    events: list[dict] = []
    again = search(dense, target, hooks=TrainHooks(events.append, checkpoint_dir=tmp_path))
    assert events == []  # every candidate's training was restored, none re-run
    assert again.extras["target"]["chosen_ratio"] == first.extras["target"]["chosen_ratio"]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
