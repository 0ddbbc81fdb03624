"""Job spec: defaults that depend on the method or the dataset, fidelity bounds, distillation settings and
image preprocessing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.spec import EarlyBirdParams, FinetuneParams, JobSpec


def test_the_default_finetune_budget_is_a_number_of_steps_that_scales_with_the_dataset():
    params = FinetuneParams()
    assert params.epochs is None and params.distill > 0  # distillation from the dense model on by default
    assert params.resolved_epochs(n_train=3200, batch_size=128) == 60  # 25 steps per epoch, 1500 steps
    assert params.resolved_epochs(n_train=1_280_000, batch_size=128) == 10  # big data: at least 10 epochs
    assert params.resolved_epochs(n_train=500, batch_size=128) == 200  # tiny data: at most 200 epochs
    assert FinetuneParams(epochs=3).resolved_epochs(n_train=3200, batch_size=128) == 3


def test_the_resolved_spec_holds_the_per_detector_early_bird_defaults():
    spec = JobSpec(pipeline=[{"early_bird": {"detector": "bn"}}, {"prune_channels": {}}])
    stored = spec.model_dump(mode="json")["pipeline"][0]["early_bird"]
    assert (stored["window"], stored["threshold"], stored["relative_threshold"]) == (4, 0.1, None)
    assert EarlyBirdParams().relative_threshold == 0.5


def test_a_finetune_after_early_bird_trains_the_ticket_without_a_teacher_unless_told_otherwise():
    spec = JobSpec(pipeline=[{"early_bird": {"max_epochs": 30}}, {"finetune": {}}])
    resolved = spec.pipeline[1].params
    # the upload is the untrained start; lr and budget depend on the model and the ticket (the runner's)
    assert (resolved.distill, resolved.lr, resolved.epochs) == (0.0, None, None)
    stored = JobSpec.model_validate(spec.model_dump(mode="json")).pipeline[1].params  # the resolved spec keeps them
    assert (stored.distill, stored.lr, stored.epochs) == (0.0, None, None)
    chosen = JobSpec(pipeline=[{"early_bird": {}}, {"finetune": {"distill": 0.5, "lr": 0.02, "steps": 500}}])
    assert (chosen.pipeline[1].params.distill, chosen.pipeline[1].params.lr) == (0.5, 0.02)
    assert (chosen.pipeline[1].params.epochs, chosen.pipeline[1].params.steps) == (None, 500)
    before = JobSpec(pipeline=[{"finetune": {}}, {"early_bird": {}}]).pipeline[0].params
    assert (before.distill, before.lr, before.epochs) == (FinetuneParams().distill, None, None)


def test_a_relative_threshold_for_the_bn_detector_is_refused():
    with pytest.raises(ValidationError, match="relative_threshold"):
        EarlyBirdParams(detector="bn", relative_threshold=0.5)


def test_channel_removal_after_prune_weights_is_refused_with_the_order_that_works():
    with pytest.raises(ValidationError, match="put 'early_bird' before 'prune_weights'"):
        JobSpec(pipeline=[{"prune_weights": {"sparsity": 0.5}}, {"early_bird": {}}])
    spec = JobSpec(pipeline=[{"prune_channels": {}}, {"prune_weights": {}}, {"finetune": {}}])
    assert spec.pipeline[1].params.sparsity == 0.9 and type(spec.pipeline[1]).__name__ == "PruneWeightsStage"


def test_a_probmask_stage_before_prune_channels_is_refused_and_after_it_is_accepted():
    with pytest.raises(ValidationError, match="before 'probmask'"):
        JobSpec(pipeline=[{"probmask": {}}, {"prune_channels": {}}])
    assert JobSpec(pipeline=[{"prune_channels": {}}, {"probmask": {}}, {"finetune": {}}]).stage_names() == [
        "prune_channels",
        "probmask",
        "finetune",
    ]


def test_fidelity_bounds_sit_beside_the_accuracy_drop_and_default_to_off():
    spec = JobSpec.model_validate({"acceptance": {"min_agreement": 0.98, "max_relative_error": 0.05}})
    assert spec.acceptance.min_agreement == 0.98
    assert spec.acceptance.max_relative_error == 0.05
    assert spec.acceptance.max_accuracy_drop == 1.0
    default = JobSpec()
    assert default.acceptance.min_agreement is None and default.acceptance.max_relative_error is None
    assert JobSpec.model_validate({"acceptance": {"max_accuracy_drop": None}}).acceptance.max_accuracy_drop is None


@pytest.mark.parametrize(
    "acceptance",
    [
        {"min_agreement": 1.5},
        {"max_relative_error": -0.1},
        {"min_agreement": float("nan")},
        {"min_agreement": 0.9, "typo": 1},
    ],
)
def test_out_of_range_fidelity_bounds_are_refused(acceptance):
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"acceptance": acceptance})


def test_output_kinds_are_declared_by_name_or_index():
    spec = JobSpec.model_validate(
        {
            "distillation": {
                "kinds": {"boxes": "regression", "0": "logits"},
                "temperature": 2.0,
                "regression_loss": "smooth_l1",
            }
        }
    )
    assert spec.distillation.kinds == {"boxes": "regression", "0": "logits"}
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"distillation": {"kinds": {"boxes": "bbox"}}})


def test_preprocessing_is_checked_for_consistency():
    spec = JobSpec.model_validate(
        {
            "preprocessing": {
                "resize": 256,
                "center_crop": [224, 224],
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "channel_order": "bgr",
                "layout": "nhwc",
            }
        }
    )
    assert spec.preprocessing.center_crop == (224, 224)
    assert JobSpec().preprocessing is None
    for bad in (
        {"mean": [0.5, 0.5]},
        {"color": "grayscale", "std": [0.2, 0.2, 0.2]},
        {"dtype": "uint8", "mean": [0.5]},
        {"resize": 0},
        {"std": [0.0]},
        {"layout": "chw"},
    ):
        with pytest.raises(ValidationError):
            JobSpec.model_validate({"preprocessing": bad})


def test_prune_channels_takes_a_ratio_or_a_target_and_keeps_the_half_default_without_either():
    from service.core.spec import PruneChannelsParams

    assert PruneChannelsParams().ratio == 0.5 and PruneChannelsParams().target is None
    searched = PruneChannelsParams(target={"max_accuracy_drop": 1.0})
    assert searched.ratio is None and searched.target.bound == "max_accuracy_drop" and not searched.target.is_cost
    assert PruneChannelsParams(target={"macs": 0.3}).target.is_cost
    with pytest.raises(ValidationError, match="not both"):
        PruneChannelsParams(ratio=0.3, target={"macs": 0.3})


def test_a_resolved_spec_with_a_target_validates_again_as_stored():
    spec = JobSpec(pipeline=[{"prune_channels": {"target": {"latency_ms": 3.0, "batch": 8}}}, {"finetune": {}}])
    again = JobSpec.model_validate(spec.model_dump(mode="json"))
    assert again.pipeline[0].params.target.batch == 8 and again.pipeline[0].params.ratio is None
    plain = JobSpec()
    assert JobSpec.model_validate(plain.model_dump(mode="json")).pipeline[0].params.ratio == 0.5


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({}, "exactly one bound"),
        ({"max_accuracy_drop": 1.0, "min_agreement": 0.9}, "got max_accuracy_drop, min_agreement"),
        ({"macs": 0.3, "batch": 4}, "with latency_ms only"),
        ({"macs": 1.0}, "macs"),
    ],
)
def test_a_target_needs_exactly_one_bound_and_a_batch_only_for_latency(target, message):
    from service.core.spec import TargetParams

    with pytest.raises(ValidationError, match=message):
        TargetParams(**target)
    assert TargetParams(latency_ms=1.0).batch == 1


def test_two_stages_with_a_target_in_one_pipeline_are_refused():
    stage = {"prune_channels": {"target": {"macs": 0.5}}}
    with pytest.raises(ValidationError, match="at most one prune_channels stage may have a target"):
        JobSpec(pipeline=[stage, stage])


def test_the_target_example_of_the_readme_is_a_valid_spec():
    from pathlib import Path

    import yaml

    example = Path(__file__).resolve().parents[3] / "examples" / "shears-job-target.yaml"
    spec = JobSpec.model_validate(yaml.safe_load(example.read_text()))
    assert spec.pipeline[0].params.target.max_accuracy_drop == 1.0 and spec.pipeline[0].params.ratio is None


def test_latency_is_timed_at_batch_one_unless_more_batch_sizes_are_asked_for():
    assert JobSpec().export.latency_batch_sizes == [1]
    assert JobSpec.model_validate({"export": {"latency_batch_sizes": [1, 32]}}).export.latency_batch_sizes == [1, 32]


@pytest.mark.parametrize(
    ("export", "message"),
    [
        ({"dynamic_batch": False, "latency_batch_sizes": [1, 32]}, "need export.dynamic_batch"),
        ({"latency_batch_sizes": [8, 8]}, "twice"),
        ({"latency_batch_sizes": []}, "at least 1"),
        ({"latency_batch_sizes": [2048]}, "less than or equal to 1024"),
    ],
)
def test_latency_batch_sizes_that_cannot_be_timed_are_refused_with_the_reason(export, message):
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate({"export": export})
