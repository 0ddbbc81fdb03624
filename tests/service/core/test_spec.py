"""Job spec defaults that depend on the method or the dataset."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.spec import EarlyBirdParams, FinetuneParams, JobSpec


def test_the_default_finetune_budget_is_a_number_of_steps_that_scales_with_the_dataset():
    params = FinetuneParams()
    assert params.epochs is None and params.distill > 0  # distillation from the dense model on by default
    assert params.resolved_epochs(n_train=3200, batch_size=128) == 40  # 25 steps per epoch, 1000 steps
    assert params.resolved_epochs(n_train=1_280_000, batch_size=128) == 10  # big data: at least 10 epochs
    assert params.resolved_epochs(n_train=500, batch_size=128) == 100  # tiny data: at most 100 epochs
    assert FinetuneParams(epochs=3).resolved_epochs(n_train=3200, batch_size=128) == 3


def test_the_resolved_spec_holds_the_per_detector_early_bird_defaults():
    spec = JobSpec(pipeline=[{"early_bird": {"detector": "bn"}}, {"prune_channels": {}}])
    stored = spec.model_dump(mode="json")["pipeline"][0]["early_bird"]
    assert (stored["window"], stored["threshold"], stored["relative_threshold"]) == (4, 0.1, None)
    assert EarlyBirdParams().relative_threshold == 0.5


def test_a_relative_threshold_for_the_bn_detector_is_refused():
    with pytest.raises(ValidationError, match="relative_threshold"):
        EarlyBirdParams(detector="bn", relative_threshold=0.5)


def test_a_probmask_stage_before_prune_channels_is_refused_and_after_it_is_accepted():
    with pytest.raises(ValidationError, match="before 'probmask'"):
        JobSpec(pipeline=[{"probmask": {}}, {"prune_channels": {}}])
    assert JobSpec(pipeline=[{"prune_channels": {}}, {"probmask": {}}, {"finetune": {}}]).stage_names() == [
        "prune_channels", "probmask", "finetune"]  # fmt: skip
