"""Label-free jobs: a two-headed conv detector pruned with an unlabelled image set, finetuned by
distillation from the dense model, with fidelity measured before and after finetuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from service.core.contracts import JobReport, JobResult
from service.core.spec import JobSpec
from tests.images import flat_folder, zip_bytes
from worker.pipeline import EngineError, PipelineInputs, run_pipeline


class TinyDetector(nn.Module):
    """A conv backbone with a per-cell class head (N, 3, 4, 4) and a box head (N, 4, 4, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 24, 3, stride=2, padding=1),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.Conv2d(24, 24, 3, stride=2, padding=1),
            nn.BatchNorm2d(24),
            nn.ReLU(),
        )
        self.scores = nn.Conv2d(24, 3, 1)
        self.boxes = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        features = self.backbone(x)
        return self.scores(features), self.boxes(features)


def tiny_detector_onnx(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = TinyDetector().eval()
    for module in model.modules():  # give BN non-trivial statistics so channels differ
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.2, 1.5)
    torch.onnx.export(
        model,
        (torch.rand(2, 3, 16, 16),),
        str(path),
        input_names=["images"],
        output_names=["scores", "boxes"],
        dynamic_axes={"images": {0: "n"}, "scores": {0: "n"}, "boxes": {0: "n"}},
        dynamo=False,
    )
    return path


@pytest.fixture
def detector_job(tmp_path: Path) -> tuple[PipelineInputs, Path]:
    model = tiny_detector_onnx(tmp_path / "detector.onnx")
    data = tmp_path / "frames.zip"
    data.write_bytes(zip_bytes(flat_folder(96, size=16)))
    return PipelineInputs(model_path=model, dataset_path=data, device="cpu"), tmp_path / "out"


def _spec(**overrides) -> JobSpec:
    spec = {
        "pipeline": [{"prune_channels": {"criterion": "l1", "ratio": 0.3}}, {"finetune": {"epochs": 12, "lr": 0.02}}],
        "distillation": {"kinds": {"scores": "logits"}},
        "training": {"batch_size": 16, "val_fraction": 0.25},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_relative_error": 0.9, "min_agreement": 0.2},
    }
    spec.update(overrides)
    return JobSpec.model_validate(spec)


def test_an_unlabelled_detector_job_distils_every_output_and_fidelity_improves(detector_job):
    inputs, out = detector_job
    outcome = run_pipeline(inputs, _spec(), out)
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["labelled"] is False and report["accuracy"]["dense"] is None
    after, final = report["fidelity"]["after_pruning"], report["fidelity"]["final"]
    assert set(final["outputs"]) == {"scores", "boxes"}
    assert final["outputs"]["scores"]["kind"] == "logits" and final["outputs"]["boxes"]["kind"] == "regression"
    assert final["outputs"]["boxes"]["shape"] == [4, 4, 4]
    for name in ("scores", "boxes"):  # both heads were pulled back towards the dense model
        assert final["outputs"][name]["relative_error"] < after["outputs"][name]["relative_error"]
    assert final["fidelity"] > after["fidelity"]
    assert report["parameters"]["after"] < report["parameters"]["before"]
    checks = report["acceptance"]["checks"]
    assert checks["accuracy"]["passed"] is None and "no labels" in checks["accuracy"]["reason"]
    assert checks["max_relative_error"]["passed"] is True and report["acceptance"]["passed"] is True
    assert outcome.summary["fidelity"]["final"] == final["fidelity"]
    html = (out / "report.html").read_text()
    assert "Fidelity to the dense model" in html and "boxes" in html
    typed = JobReport.model_validate(report)  # the published contracts hold without labels
    assert typed.fidelity.final.outputs["boxes"].kind == "regression" and typed.accuracy.final is None
    assert typed.acceptance.checks["max_relative_error"].passed is True
    assert JobResult.model_validate(outcome.summary).fidelity["final"] == final["fidelity"]


def test_a_tight_fidelity_bound_fails_the_gate(detector_job):
    inputs, out = detector_job
    spec = _spec(
        acceptance={"max_relative_error": 1e-6}, pipeline=[{"prune_channels": {"criterion": "l1", "ratio": 0.3}}]
    )
    report = run_pipeline(inputs, spec, out).report
    assert report["acceptance"]["passed"] is False
    assert report["acceptance"]["checks"]["max_relative_error"]["passed"] is False
    assert report["fidelity"]["after_pruning"] is None and report["fidelity"]["final"]["fidelity"] < 1.0


def test_early_bird_needs_labels_and_says_so(detector_job):
    inputs, out = detector_job
    with pytest.raises(EngineError, match="labels"):
        run_pipeline(inputs, _spec(pipeline=[{"early_bird": {"max_epochs": 2}}]), out)


def _splits(labelled: bool):
    from worker.io.data import DataSplits

    x = torch.rand(64, 3, 8, 8)
    y = torch.randint(0, 3, (64,)) if labelled else None
    return DataSplits(
        x_train=x[:48],
        y_train=None if y is None else y[:48],
        x_val=x[48:],
        y_val=None if y is None else y[48:],
        num_classes=3 if labelled else 0,
    )


def test_the_dense_model_is_kept_to_distil_without_labels_or_for_fidelity_bounds_and_only_then():
    from worker.pipeline import _needs_dense_model

    plain = [{"prune_channels": {"criterion": "l1", "ratio": 0.3}}, {"finetune": {"epochs": 2, "distill": 0.0}}]
    assert not _needs_dense_model(JobSpec.model_validate({"pipeline": plain}), _splits(labelled=True))
    assert _needs_dense_model(JobSpec.model_validate({"pipeline": plain}), _splits(labelled=False))
    bounded = {"pipeline": plain, "acceptance": {"min_agreement": 0.9}}
    assert _needs_dense_model(JobSpec.model_validate(bounded), _splits(labelled=True))
    distils = [{"prune_channels": {"criterion": "l1", "ratio": 0.3}}, {"finetune": {}}]  # default: distill 0.9
    assert _needs_dense_model(JobSpec.model_validate({"pipeline": distils}), _splits(labelled=True))
    no_budget = [{"prune_channels": {"criterion": "l1", "ratio": 0.3}}, {"finetune": {"epochs": 0, "distill": 0.9}}]
    assert not _needs_dense_model(JobSpec.model_validate({"pipeline": no_budget}), _splits(labelled=True))


def test_a_fidelity_target_searches_an_unlabelled_model_and_an_accuracy_target_needs_labels(detector_job):
    inputs, out = detector_job
    target = {"max_relative_error": 0.9, "candidates": 2, "steps": 4}
    pipeline = [{"prune_channels": {"criterion": "l1", "target": target}}, {"finetune": {"epochs": 2, "lr": 0.02}}]
    report = run_pipeline(inputs, _spec(pipeline=pipeline), out).report
    section = report["target"]
    assert section["bound"] == "max_relative_error" and len(section["points"]) == 2
    assert all(p["accuracy"] is None and p["fidelity"] is not None for p in section["points"])
    check = report["acceptance"]["checks"]["target"]
    assert check["name"] == "max_relative_error" and check["passed"] == (check["measured"] <= 0.9)
    accuracy = [{"prune_channels": {"criterion": "l1", "target": {"max_accuracy_drop": 1.0}}}]
    with pytest.raises(EngineError) as error:
        run_pipeline(inputs, _spec(pipeline=accuracy), out)
    assert error.value.code == "labels-required"
