"""A job of ``[prune_weights, finetune]``: global magnitude pruning through the pipeline, its
masks exported and its sparsity reported."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from service.core.spec import JobSpec
from worker.io.zoo import build
from worker.pipeline import PipelineInputs, run_pipeline


def test_a_prune_weights_job_exports_its_masks_and_reports_the_sparsity_it_reached(tmp_path):
    torch.manual_seed(0)
    save_file(build("mnist1d_cnn").state_dict(), tmp_path / "model.safetensors")
    spec = JobSpec.model_validate(
        {
            "dataset": {"builtin": "mnist1d"},
            "pipeline": [{"prune_weights": {"sparsity": 0.8}}, {"finetune": {"epochs": 1, "distill": 0.0}}],
            "export": {"formats": ["onnx"]},
            "acceptance": {"max_accuracy_drop": 100.0},
        }
    )
    outcome = run_pipeline(
        PipelineInputs(
            model_path=tmp_path / "model.safetensors", architecture="mnist1d_cnn", builtin_dataset="mnist1d"
        ),
        spec,
        tmp_path / "out",
    )
    report = json.loads(outcome.files["report.json"].read_text())
    masks = load_file(outcome.files["masks.safetensors"])
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.2 * sum(m.numel() for m in masks.values()))
    assert abs(report["structure"]["unstructured_sparsity"] - 0.8) < 1e-3
    assert report["accuracy"]["pruned"] is not None and report["accuracy"]["finetuned"] is not None
