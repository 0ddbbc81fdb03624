"""Image-archive jobs through HTTP only, against uvicorn + celery worker + redis + moto + PostgreSQL:
a labelled ImageFolder .zip end to end (its report's accuracy is what the downloaded ONNX gives on
the validation images), an unlabelled detector job finetuned by distillation, and a real text
detector from the model corpus pruned with rendered pages (issue 12)."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from service.core.spec import PreprocessingParams
from tests import servers
from tests.images import flat_folder, image_folder, text_document_png, zip_bytes
from tests.worker.test_labelfree import tiny_detector_onnx
from worker.corpus import ROOT, fetch
from worker.io.images import preprocess

pytestmark = pytest.mark.integration

PREPROCESSING = {"resize": 12, "center_crop": 10, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture
def api(deployment_compose):
    base, key = deployment_compose
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        yield client


def _ready(api, resource: str, item_id: str) -> dict:
    servers.wait_until(
        lambda: api.get(f"/v1/{resource}/{item_id}").json()["status"] != "validating",
        120,
        f"{resource} {item_id} inspected",
        interval=0.2,
    )
    return api.get(f"/v1/{resource}/{item_id}").json()


def _finished(api, job_id: str) -> dict:
    servers.wait_until(
        lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] in {"succeeded", "failed", "cancelled"},
        600,
        f"job {job_id} to end",
        interval=0.5,
    )
    return api.get(f"/v1/jobs/{job_id}").json()


def _classifier_onnx(members: list[tuple[str, bytes]], path) -> None:
    """A small CNN trained on the archive's training images (class c: channel c saturated)."""
    params = PreprocessingParams(**PREPROCESSING)
    x, y = [], []
    for name, data in members:
        if "/train/" in name:
            x.append(preprocess(Image.open(io.BytesIO(data)), params))
            y.append(int(name.split("/class")[1].split("/")[0]))
    xt, yt = torch.from_numpy(np.stack(x)), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    model.eval()
    torch.onnx.export(
        model,
        (xt[:2],),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )


def test_a_labelled_image_folder_zip_job_reports_the_accuracy_its_onnx_gives(api, tmp_path) -> None:
    members = image_folder(classes=3, per_class=14, size=14, split=True)  # 12 train + 2 val per class
    _classifier_onnx(members, tmp_path / "cnn.onnx")
    model = api.post("/v1/models", files={"file": ("cnn.onnx", (tmp_path / "cnn.onnx").read_bytes())}).json()
    dataset = api.post("/v1/datasets", files={"file": ("pets.zip", zip_bytes(members))})
    assert dataset.status_code == 202, dataset.text
    info = _ready(api, "datasets", dataset.json()["id"])
    assert info["status"] == "ready", info
    assert info["info"]["images"]["classes"] == ["class0", "class1", "class2"]
    spec = {
        "model_id": model["id"],
        "dataset_id": dataset.json()["id"],
        "preprocessing": PREPROCESSING,
        "pipeline": [{"prune_channels": {"criterion": "l1", "ratio": 0.3}}, {"finetune": {"epochs": 2, "lr": 0.01}}],
        "training": {"batch_size": 8},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_accuracy_drop": 100},
    }
    _ready(api, "models", model["id"])
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 202, job.text
    done = _finished(api, job.json()["id"])
    assert done["status"] == "succeeded", done
    report = api.get(f"/v1/jobs/{done['id']}/report").json()
    onnx_bytes = api.get(f"/v1/jobs/{done['id']}/artifacts/model.onnx", follow_redirects=True).content

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    params = PreprocessingParams(**PREPROCESSING)
    with zipfile.ZipFile(io.BytesIO(zip_bytes(members))) as archive:
        val = sorted(n for n in archive.namelist() if "/val/" in n)
        x = np.stack([preprocess(Image.open(io.BytesIO(archive.read(n))), params) for n in val])
    labels = np.array([int(n.split("/class")[1].split("/")[0]) for n in val])
    predicted = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0].argmax(axis=1)
    onnx_accuracy = 100.0 * float((predicted == labels).mean())
    assert report["dataset"]["val"] == len(val) == 6
    assert report["accuracy"]["final"] == pytest.approx(onnx_accuracy)
    assert report["fidelity"]["final"]["outputs"]["logits"]["agreement"] is not None


def test_an_unlabelled_detector_job_through_http_finetunes_by_distillation(api, tmp_path) -> None:
    model = api.post("/v1/models", files={"file": ("det.onnx", tiny_detector_onnx(tmp_path / "det.onnx").read_bytes())})
    dataset = api.post("/v1/datasets", files={"file": ("frames.zip", zip_bytes(flat_folder(64, size=16)))})
    assert model.status_code == 202 and dataset.status_code == 202, (model.text, dataset.text)
    assert _ready(api, "datasets", dataset.json()["id"])["info"]["labelled"] is False
    _ready(api, "models", model.json()["id"])
    spec = {
        "model_id": model.json()["id"],
        "dataset_id": dataset.json()["id"],
        "pipeline": [{"prune_channels": {"criterion": "l1", "ratio": 0.3}}, {"finetune": {"epochs": 10, "lr": 0.02}}],
        "distillation": {"kinds": {"scores": "logits"}},
        "training": {"batch_size": 16},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_relative_error": 0.9},
    }
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 202, job.text
    done = _finished(api, job.json()["id"])
    assert done["status"] == "succeeded", done
    report = api.get(f"/v1/jobs/{done['id']}/report").json()
    after, final = report["fidelity"]["after_pruning"], report["fidelity"]["final"]
    assert final["fidelity"] > after["fidelity"]
    assert all(
        final["outputs"][n]["relative_error"] < after["outputs"][n]["relative_error"] for n in ("scores", "boxes")
    )
    assert done["result"]["acceptance"]["passed"] is True
    html = api.get(f"/v1/jobs/{done['id']}/report.html").text
    assert "Fidelity to the dense model" in html
    print(json.dumps({"after_pruning": after, "final": final}))


def test_a_real_text_detector_pruned_with_unlabelled_pages_follows_its_dense_model_closer_after_distillation(
    api,
) -> None:
    """PP-OCRv4 det (paddle2onnx, symbolic height and width, a sigmoid text map) from the
    corpus, 30 % of its channels pruned, 20 distillation steps on 30 rendered pages."""
    model_path = fetch(ROOT / ".corpus", ["ppocr-det-v4"])["ppocr-det-v4"]
    pages = [(f"pages/{i:03d}.png", text_document_png(64, 64, seed=i)) for i in range(40)]
    model = api.post("/v1/models", files={"file": ("ppocr-det-v4.onnx", model_path.read_bytes())})
    dataset = api.post("/v1/datasets", files={"file": ("pages.zip", zip_bytes(pages))})
    assert model.status_code == 202 and dataset.status_code == 202, (model.text, dataset.text)
    inspected = _ready(api, "models", model.json()["id"])
    assert inspected["status"] == "ready", inspected  # symbolic dims: sized by the job's dataset
    assert inspected["info"]["input_shape"] is None
    assert _ready(api, "datasets", dataset.json()["id"])["info"]["labelled"] is False
    spec = {
        "model_id": model.json()["id"],
        "dataset_id": dataset.json()["id"],
        "preprocessing": {"channel_order": "bgr", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "pipeline": [{"prune_channels": {"criterion": "l1", "ratio": 0.3}}, {"finetune": {"steps": 20, "lr": 0.01}}],
        "training": {"batch_size": 8, "val_fraction": 0.25},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_accuracy_drop": None},
    }
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 202, job.text
    done = _finished(api, job.json()["id"])
    assert done["status"] == "succeeded", done
    report = api.get(f"/v1/jobs/{done['id']}/report").json()
    assert report["macs"]["after"] < report["macs"]["before"]
    after_pruning, after_finetuning = report["fidelity"]["after_pruning"], report["fidelity"]["final"]
    before, after = after_pruning["outputs"]["sigmoid_0.tmp_0"], after_finetuning["outputs"]["sigmoid_0.tmp_0"]
    assert after["kind"] == "probabilities" and after["shape"] == [1, 64, 64]
    assert after["relative_error"] < before["relative_error"] - 0.1  # measurably closer, not noise
    assert after["cosine"] > before["cosine"] + 0.1
    assert after_finetuning["fidelity"] > after_pruning["fidelity"]
    html = api.get(f"/v1/jobs/{done['id']}/report.html").text
    assert "rel. error after finetuning" in html and "sigmoid_0.tmp_0" in html
    print(json.dumps({"after_pruning": after_pruning, "after_finetuning": after_finetuning}))
