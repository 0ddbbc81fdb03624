"""A job with ``prune_channels.iterations``: the steps and their short finetunes run inside the
pipeline, the progress plan counts them, and the report lists the steps."""

from __future__ import annotations

import json

import torch

from service.core.spec import JobSpec
from tests.worker.pruning.tiny import ConvBN2d, onnx_bytes
from worker.pipeline import PipelineInputs, run_pipeline


def test_an_iterative_job_reports_every_step_and_ends_at_the_one_shot_size(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "model.onnx").write_bytes(onnx_bytes(ConvBN2d(classes=10), torch.randn(2, 1, 8, 8)))
    reports = {}
    for iterations in (1, 2):
        spec = JobSpec.model_validate(
            {
                "dataset": {"builtin": "digits"},
                "pipeline": [
                    {"prune_channels": {"criterion": "l1", "ratio": 0.5, "iterations": iterations}},
                    {"finetune": {"epochs": 2}},
                ],
                "export": {"formats": ["onnx"]},
                "acceptance": {"max_accuracy_drop": None},
            }
        )
        events: list[dict] = []
        outcome = run_pipeline(
            PipelineInputs(model_path=tmp_path / "model.onnx", builtin_dataset="digits"),
            spec,
            tmp_path / f"out{iterations}",
            on_progress=events.append,
        )
        reports[iterations] = (json.loads(outcome.files["report.json"].read_text()), events)
    one_shot, _ = reports[1]
    stepped, events = reports[2]
    assert stepped["macs"]["after"] == one_shot["macs"]["after"]  # same channels per layer as one shot
    section = stepped["structure"]["iterative_pruning"]
    assert section["iterations"] == 2 and section["epochs_between"] == 1
    assert [s["step"] for s in section["steps"]] == [1, 2] and "accuracy_finetuned" in section["steps"][0]
    assert [s["kept_fraction"] for s in section["steps"]] == [0.75, 0.5]
    assert all(1.0 < s["accuracy_pruned"] <= 100.0 for s in section["steps"])  # percent, like the report
    assert "iterative_pruning" not in one_shot["structure"]
    epochs = [e for e in events if e.get("epoch") is not None]
    assert epochs[0]["stage"] == "0-prune_channels.iteration-1"
    assert epochs[0]["percent"] == 33.3  # 1 of 3 planned epochs: the short finetune is in the plan
