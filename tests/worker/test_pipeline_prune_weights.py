"""A job of ``[prune_weights, finetune]``: global magnitude pruning through the pipeline, its
masks exported and its sparsity reported."""

from __future__ import annotations

from safetensors.torch import load_file

from service.core.spec import JobSpec
from tests.worker.zoo_jobs import run_mnist1d_cnn_job


def test_a_prune_weights_job_exports_its_masks_and_reports_the_sparsity_it_reached(tmp_path):
    spec = JobSpec.model_validate(
        {
            "dataset": {"builtin": "mnist1d"},
            "pipeline": [{"prune_weights": {"sparsity": 0.8}}, {"finetune": {"epochs": 1, "distill": 0.0}}],
            "export": {"formats": ["onnx"]},
            "acceptance": {"max_accuracy_drop": 100.0},
        }
    )
    _, outcome, report = run_mnist1d_cnn_job(tmp_path, spec)
    masks = load_file(outcome.files["masks.safetensors"])
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.2 * sum(m.numel() for m in masks.values()))
    assert abs(report["structure"]["unstructured_sparsity"] - 0.8) < 1e-3
    assert report["accuracy"]["pruned"] is not None and report["accuracy"]["finetuned"] is not None
