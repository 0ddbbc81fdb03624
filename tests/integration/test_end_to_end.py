"""A CI pipeline's whole path, through HTTP only, against real processes.

Two deployments run the same scenario:
- ``compose``: the commands docker-compose.yml and the Dockerfile run (uvicorn with the app
  factory, ``celery worker``), against redis-server, moto's S3 server and PostgreSQL;
- ``embedded``: ``shears up`` on its defaults (SQLite, files, kombu filesystem broker).
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import onnxruntime
import pytest
import torch

from tests import servers

def _wait_job(client: httpx.Client, job_id: str) -> dict:
    servers.wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] in {"succeeded", "failed", "cancelled"},
                       240, f"job {job_id}", interval=0.5)  # fmt: skip
    return client.get(f"/v1/jobs/{job_id}").json()


SPEC = {
    "pipeline": [
        {"prune_channels": {"criterion": "spline", "ratio": 0.5, "probes": 128}},
        {"probmask": {"sparsity": 0.5, "epochs": 2}},
        {"finetune": {"epochs": 2, "lr": 0.01}},
    ],
    "acceptance": {"max_accuracy_drop": 50.0},
}


@pytest.mark.parametrize("deployment", ["deployment_compose", "deployment_embedded"])
def test_a_ci_pipeline_prunes_an_onnx_model_and_the_artifacts_match_the_report(
    deployment: str, request, model_and_data, tmp_path: Path
) -> None:
    base, key = request.getfixturevalue(deployment)
    model_path, data_path, split = model_and_data
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60, follow_redirects=True)

    model = client.post("/v1/models", files={"file": ("model.onnx", model_path.read_bytes())})
    dataset = client.post("/v1/datasets", files={"file": ("data.npz", data_path.read_bytes())})
    assert model.status_code == 202 and dataset.status_code == 202, (model.text, dataset.text)
    for resource, item in (("models", model.json()), ("datasets", dataset.json())):
        servers.wait_until(lambda: client.get(f"/v1/{resource}/{item['id']}").json()["status"] != "validating",
                           60, f"{resource} inspection")  # fmt: skip
        checked = client.get(f"/v1/{resource}/{item['id']}").json()
        assert checked["status"] == "ready", checked

    created = client.post("/v1/jobs", json={**SPEC, "model_id": model.json()["id"], "dataset_id": dataset.json()["id"]})
    assert created.status_code == 202, created.text
    job = _wait_job(client, created.json()["id"])
    assert job["status"] == "succeeded", job
    names = {artifact["name"] for artifact in job["artifacts"]}
    assert {"model.onnx", "model.torchscript.pt", "masks.safetensors", "report.json", "report.html"} <= names

    (tmp_path / "model.onnx").write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx").content)
    torchscript_bytes = client.get(f"/v1/jobs/{job['id']}/artifacts/model.torchscript.pt").content
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert "<svg" in client.get(f"/v1/jobs/{job['id']}/report.html").text or "<img" in client.get(f"/v1/jobs/{job['id']}/report.html").text

    x_val, y_val = split["x_val"], split["y_val"]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x_val})[0]
    scripted = torch.jit.load(io.BytesIO(torchscript_bytes))  # our own artifact, produced by our worker
    with torch.no_grad():
        torch_logits = scripted(torch.from_numpy(x_val)).numpy()
    onnx_accuracy = float((onnx_logits.argmax(1) == y_val).mean())
    torch_accuracy = float((torch_logits.argmax(1) == y_val).mean())
    stated = report["accuracy"]["final"]  # percent
    assert job["result"]["accuracy"]["final"] == stated
    assert 100 * onnx_accuracy == pytest.approx(stated, abs=1e-6)
    assert 100 * torch_accuracy == pytest.approx(stated, abs=1e-6)
    assert report["macs"]["after"] < report["macs"]["before"]
    assert report["structure"]["channels_removed"] is True
    assert report["structure"]["unstructured_sparsity"] > 0.3
