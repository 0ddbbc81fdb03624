"""A job of ``[early_bird, finetune]`` with the defaults: the ticket trains for the rest of the
schedule, with cross-entropy, and the progress plan counts the schedule."""

from __future__ import annotations

import pytest
import torch

from service.core.spec import JobSpec
from tests.worker.pruning.tiny import ConvBN2d, onnx_bytes
from tests.worker.zoo_jobs import run_mnist1d_cnn_job
from worker.pipeline import EngineError, PipelineInputs, run_pipeline


def _spec(dataset: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "dataset": {"builtin": dataset},
            # bn, window 1, threshold 1: the ticket at epoch 2 of a schedule of 8
            "pipeline": [
                {"early_bird": {"detector": "bn", "max_epochs": 8, "window": 1, "threshold": 1.0}},
                {"finetune": {}},
            ],
            "export": {"formats": ["onnx"]},
            "acceptance": {"max_accuracy_drop": 100.0},
        }
    )


def test_an_early_bird_job_trains_the_ticket_for_the_rest_of_the_schedule_and_plans_it(tmp_path):
    events: list[dict] = []
    _, _, report = run_mnist1d_cnn_job(tmp_path, _spec("mnist1d"), on_progress=events.append)
    assert report["early_bird"]["epoch"] == 2 and report["early_bird"]["warnings"] == []
    # the gate compares with the network the ticket came from, not with the untrained upload
    ticket = report["early_bird"]["dense_accuracy"]
    assert report["acceptance"]["reference"] == "ticket" and ticket > report["accuracy"]["dense"] + 20
    assert report["acceptance"]["measured_drop"] == pytest.approx(ticket - report["accuracy"]["final"])
    epochs = [e for e in events if e.get("epoch") is not None]
    assert [e["stage"] for e in epochs].count("1-finetune") == 6  # 8 - 2: the rest of the schedule
    assert epochs[0]["percent"] == 10.0  # 1 of 8 + 2 planned (the schedule, and the finetune's least)
    assert epochs[-1]["percent"] == 80.0  # the schedule's 8 epochs done; the report and export follow
    # a stage's start carries the name its epochs and its training curve carry
    starts = [e["stage"] for e in events if "epoch" not in e]
    assert starts == ["load", "evaluate_dense", "0-early_bird", "1-finetune", "export"]
    assert set(report["training_curves"]) == {"0-early_bird", "1-finetune"}


def test_the_bn_detector_on_a_model_without_batchnorm_fails_with_a_code_that_names_the_fix(tmp_path):
    torch.manual_seed(0)  # an eval-mode ONNX export: BatchNorm folded into the convolutions
    (tmp_path / "model.onnx").write_bytes(onnx_bytes(ConvBN2d(classes=10), torch.randn(2, 1, 8, 8)))
    with pytest.raises(EngineError, match="detector: spline") as error:
        run_pipeline(
            PipelineInputs(model_path=tmp_path / "model.onnx", builtin_dataset="digits"), _spec("digits"), tmp_path
        )
    assert error.value.code == "batchnorm-required"


def test_after_early_bird_distillation_and_fidelity_use_the_network_at_the_ticket_not_the_upload(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from worker.io.datasets import builtin_dataset

    spec = JobSpec.model_validate(
        {
            "dataset": {"builtin": "mnist1d"},
            "pipeline": [
                {"early_bird": {"detector": "bn", "max_epochs": 4, "window": 1, "threshold": 1.0}},
                {"finetune": {"epochs": 1, "distill": 0.5}},
            ],
            "export": {"formats": ["onnx"]},
            "acceptance": {"max_accuracy_drop": 100.0, "min_agreement": 0.0},
        }
    )
    upload, outcome, report = run_mnist1d_cnn_job(tmp_path, spec)
    x_val = builtin_dataset("mnist1d", seed=spec.seed).x_val
    session = ort.InferenceSession(str(outcome.files["model.onnx"]))
    final = session.run(None, {session.get_inputs()[0].name: x_val.numpy()})[0].argmax(1)
    with torch.no_grad():
        untrained = upload.eval()(x_val).argmax(1).numpy()
    agreement_with_upload = float(np.mean(final == untrained))
    agreement = report["fidelity"]["final"]["outputs"]["output_0"]["agreement"]
    assert report["acceptance"]["reference"] == "ticket"
    assert agreement > agreement_with_upload + 0.2  # measured against a trained network, not the untrained start
