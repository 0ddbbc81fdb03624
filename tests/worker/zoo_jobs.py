"""A job run by the worker's pipeline on a zoo ``mnist1d_cnn`` (seed 0's untrained weights, with
its BatchNorm) uploaded as a safetensors state dict, on the built-in MNIST-1D dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from service.core.spec import JobSpec
from worker.io.zoo import build
from worker.pipeline import PipelineInputs, PipelineOutcome, run_pipeline


def run_mnist1d_cnn_job(
    tmp_path: Path, spec: JobSpec, on_progress: Callable[[dict], None] | None = None
) -> tuple[nn.Module, PipelineOutcome, dict]:
    """(the uploaded model, the outcome, its report as written to report.json)."""
    torch.manual_seed(0)
    upload = build("mnist1d_cnn")
    save_file(upload.state_dict(), tmp_path / "model.safetensors")
    inputs = PipelineInputs(
        model_path=tmp_path / "model.safetensors", architecture="mnist1d_cnn", builtin_dataset="mnist1d"
    )
    outcome = run_pipeline(inputs, spec, tmp_path / "out", on_progress=on_progress)
    return upload, outcome, json.loads(outcome.files["report.json"].read_text())
