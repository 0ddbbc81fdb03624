"""The stage registry: every spec stage type has one runner; the spec's stage table builds
the pipeline's entries."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from service.core.spec import STAGES, FinetuneParams, JobSpec, ProbMaskParams
from tests.worker.pruning.tiny import make_data
from worker.pruning.stages import RUNNERS, StageContext, runner_for
from worker.pruning.training import TrainHooks


def test_every_stage_of_the_spec_has_a_runner_and_every_runner_a_stage():
    assert set(RUNNERS) == set(STAGES.values())


@pytest.mark.parametrize("name", list(STAGES))
def test_each_runner_resolves_and_plans_its_epochs(name):
    params = STAGES[name]()
    runner = runner_for(params)
    assert callable(runner.run)
    assert runner.planned_epochs(params, n_train=1000, batch_size=100) >= 0


def test_an_unregistered_params_type_is_refused_by_name():
    with pytest.raises(ValueError, match="int"):
        runner_for(3)


def test_pipeline_entries_know_their_stage_name_and_params():
    spec = JobSpec.model_validate({"pipeline": [{"probmask": {"sparsity": 0.8}}, {"finetune": {"epochs": 2}}]})
    assert spec.stage_names() == ["probmask", "finetune"]
    assert isinstance(spec.pipeline[0].params, ProbMaskParams) and spec.pipeline[0].params.sparsity == 0.8
    assert isinstance(spec.pipeline[1].params, FinetuneParams)
    assert type(spec.pipeline[0]).__name__ == "ProbMaskStage"


def test_a_finetune_budget_in_steps_becomes_whole_epochs_of_that_dataset():
    runner = runner_for(FinetuneParams())
    assert runner.planned_epochs(FinetuneParams(epochs=10), n_train=1000, batch_size=100) == 10
    assert runner.planned_epochs(FinetuneParams(steps=25), n_train=1000, batch_size=100) == 3
    assert runner.planned_epochs(FinetuneParams(steps=25), n_train=10_000, batch_size=100) == 1
    assert runner.planned_epochs(FinetuneParams(), n_train=1000, batch_size=100) == 150  # default: 1500 steps


def test_a_finetune_budget_in_both_epochs_and_steps_is_refused():
    with pytest.raises(ValidationError, match="not both"):
        FinetuneParams(epochs=3, steps=100)


def context(
    spec: JobSpec, teacher, next_params=None, stage_id: str = "0-stage", hooks: TrainHooks | None = None
) -> StageContext:
    return StageContext(
        data=make_data((1, 16), n_train=96, n_val=48),
        spec=spec,
        device=torch.device("cpu"),
        hooks=hooks or TrainHooks(),
        teacher=teacher,
        stage_id=stage_id,
        next_params=next_params,
    )
