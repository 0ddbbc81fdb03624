"""A CI pipeline's whole path, through HTTP only, against real processes.

Two deployments run the same scenario:
- ``compose``: the commands docker-compose.yml and the Dockerfile run (uvicorn with the app
  factory, ``celery worker``), against redis-server, moto's S3 server and PostgreSQL;
- ``embedded``: ``shears up`` on its defaults (SQLite, files, kombu filesystem broker).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import httpx
import onnxruntime
import pytest
import torch

from tests import servers

ARTIFACT_NAMES = ("model.onnx", "model.torchscript.pt", "report.json", "report.html")


def _wait_job(client: httpx.Client, job_id: str) -> dict:
    servers.wait_until(
        lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] in {"succeeded", "failed", "cancelled"},
        900,
        f"job {job_id}",
        interval=0.5,
    )
    return client.get(f"/v1/jobs/{job_id}").json()


CHANNEL_RATIO = 0.5
MAX_DROP = 10.0  # points of validation accuracy the job may lose: the gate stays on
FLOOR = 80.0  # percent: the pruned model must still be a digits classifier (dense: about 94 %)
SPEC = {
    "pipeline": [
        {"prune_channels": {"criterion": "spline", "ratio": CHANNEL_RATIO, "probes": 128}},
        {"finetune": {}},
    ],
    "training": {"batch_size": 32},
    "acceptance": {"max_accuracy_drop": MAX_DROP},
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
        url = f"/v1/{resource}/{item['id']}"
        servers.wait_until(lambda u=url: client.get(u).json()["status"] != "validating", 300, f"{resource} inspection")
        checked = client.get(url).json()
        assert checked["status"] == "ready", checked

    created = client.post("/v1/jobs", json={**SPEC, "model_id": model.json()["id"], "dataset_id": dataset.json()["id"]})
    assert created.status_code == 202, created.text
    job = _wait_job(client, created.json()["id"])
    assert job["status"] == "succeeded", job  # the gate is on: a collapsed model fails the job
    assert [a["name"] for a in job["artifacts"]] == list(ARTIFACT_NAMES)

    downloads = {}
    for artifact in job["artifacts"]:  # every byte the job lists is the byte it serves
        content = client.get(f"/v1/jobs/{job['id']}/artifacts/{artifact['name']}").content
        assert len(content) == artifact["size_bytes"], artifact
        assert hashlib.sha256(content).hexdigest() == artifact["sha256"], artifact
        downloads[artifact["name"]] = content
    report = json.loads(downloads["report.json"])
    assert client.get(f"/v1/jobs/{job['id']}/report").json() == report
    assert client.get(f"/v1/jobs/{job['id']}/report.html").text == downloads["report.html"].decode()
    assert "<svg" in downloads["report.html"].decode() or "<img" in downloads["report.html"].decode()

    (tmp_path / "model.onnx").write_bytes(downloads["model.onnx"])
    x_val, y_val = split["x_val"], split["y_val"]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x_val})[0]
    scripted = torch.jit.load(io.BytesIO(downloads["model.torchscript.pt"]))  # our own artifact, produced by our worker
    with torch.no_grad():
        torch_logits = scripted(torch.from_numpy(x_val)).numpy()
    onnx_accuracy = float((onnx_logits.argmax(1) == y_val).mean())
    torch_accuracy = float((torch_logits.argmax(1) == y_val).mean())
    stated = report["accuracy"]["final"]  # percent
    assert job["result"]["accuracy"]["final"] == stated
    assert 100 * onnx_accuracy == pytest.approx(stated, abs=1e-6)
    assert 100 * torch_accuracy == pytest.approx(stated, abs=1e-6)
    assert stated >= FLOOR, report["accuracy"]
    assert report["acceptance"]["passed"] is True
    assert report["acceptance"]["max_accuracy_drop"] == MAX_DROP
    assert report["accuracy"]["dense"] - stated <= MAX_DROP

    # the structure asked for: half of every pruned layer's channels
    assert report["macs"]["after"] < report["macs"]["before"]
    assert report["structure"]["channels_removed"] is True
    convs = [layer for layer in report["layers"] if layer["type"] == "Conv2d"]
    assert convs and all(layer["channels_after"] == layer["channels_before"] * CHANNEL_RATIO for layer in convs), convs
