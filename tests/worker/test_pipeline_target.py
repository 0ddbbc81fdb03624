"""A job with ``prune_channels.target``: the search runs inside the pipeline, the final model is
confirmed against the bound (the gate's ``checks.target``), and the report holds the curve."""

from __future__ import annotations

import json

import pytest
import torch

from service.core.spec import JobSpec
from tests.worker.pruning.tiny import ConvBN2d, onnx_bytes
from worker.pipeline import PipelineInputs, run_pipeline


@pytest.mark.parametrize(
    ("target", "pruned"),
    [({"macs": 0.5}, True), ({"latency_ms": 1000.0, "batch": 4}, False)],
    ids=["macs", "latency-met-by-the-dense-model"],
)
def test_a_target_job_confirms_the_final_model_against_its_bound_and_reports_the_search(tmp_path, target, pruned):
    torch.manual_seed(0)
    (tmp_path / "model.onnx").write_bytes(onnx_bytes(ConvBN2d(classes=10), torch.randn(2, 1, 8, 8)))
    spec = JobSpec.model_validate(
        {
            "dataset": {"builtin": "digits"},
            "pipeline": [{"prune_channels": {"criterion": "l1", "target": target}}, {"finetune": {"epochs": 1}}],
            "export": {"formats": ["onnx"]},
            "acceptance": {"max_accuracy_drop": None},
        }
    )
    outcome = run_pipeline(
        PipelineInputs(model_path=tmp_path / "model.onnx", builtin_dataset="digits"), spec, tmp_path / "out"
    )
    report = json.loads(outcome.files["report.json"].read_text())
    section = report["target"]
    check = report["acceptance"]["checks"]["target"]
    assert check["name"] == next(iter(target)) and check["passed"] and report["acceptance"]["passed"]
    assert report["structure"]["channels_removed"] is pruned
    if pruned:
        assert check["measured"] == pytest.approx(report["macs"]["ratio"]) and check["measured"] <= 0.5
        assert [p for p in section["points"] if p["chosen"]][0]["ratio"] == section["chosen_ratio"]
    else:
        assert check["batch"] == 4 and section["dense"]["chosen"] and section["chosen_ratio"] == 0.0
    assert not any(".candidate-" in stage for stage in report["training_curves"])
    assert "Target search" in outcome.files["report.html"].read_text()
