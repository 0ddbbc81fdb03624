"""Job spec: fidelity bounds, distillation settings and image preprocessing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.spec import JobSpec


def test_fidelity_bounds_sit_beside_the_accuracy_drop_and_default_to_off():
    spec = JobSpec.model_validate({"acceptance": {"min_agreement": 0.98, "max_relative_error": 0.05}})
    assert spec.acceptance.min_agreement == 0.98
    assert spec.acceptance.max_relative_error == 0.05
    assert spec.acceptance.max_accuracy_drop == 1.0
    default = JobSpec()
    assert default.acceptance.min_agreement is None and default.acceptance.max_relative_error is None
    assert JobSpec.model_validate({"acceptance": {"max_accuracy_drop": None}}).acceptance.max_accuracy_drop is None


@pytest.mark.parametrize("acceptance", [{"min_agreement": 1.5}, {"max_relative_error": -0.1},
                                        {"min_agreement": float("nan")}, {"min_agreement": 0.9, "typo": 1}])  # fmt: skip
def test_out_of_range_fidelity_bounds_are_refused(acceptance):
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"acceptance": acceptance})


def test_output_kinds_are_declared_by_name_or_index():
    spec = JobSpec.model_validate({"distillation": {"kinds": {"boxes": "regression", "0": "logits"},
                                                    "temperature": 2.0, "regression_loss": "smooth_l1"}})  # fmt: skip
    assert spec.distillation.kinds == {"boxes": "regression", "0": "logits"}
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"distillation": {"kinds": {"boxes": "bbox"}}})


def test_preprocessing_is_checked_for_consistency():
    spec = JobSpec.model_validate({"preprocessing": {"resize": 256, "center_crop": [224, 224],
                                                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                                     "channel_order": "bgr", "layout": "nhwc"}})  # fmt: skip
    assert spec.preprocessing.center_crop == (224, 224)
    assert JobSpec().preprocessing is None
    for bad in ({"mean": [0.5, 0.5]}, {"color": "grayscale", "std": [0.2, 0.2, 0.2]},
                {"dtype": "uint8", "mean": [0.5]}, {"resize": 0}, {"std": [0.0]}, {"layout": "chw"}):  # fmt: skip
        with pytest.raises(ValidationError):
            JobSpec.model_validate({"preprocessing": bad})
