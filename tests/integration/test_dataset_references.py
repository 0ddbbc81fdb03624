"""Datasets that stay where they are, through HTTP only, against uvicorn + celery worker + redis +
moto + PostgreSQL: a prefix of class folders is registered by reference (nothing copied through
the API), inspected by the worker, pruned end to end, and deleted without touching the user's
objects; hostile references end with a named code."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.core.spec import PreprocessingParams
from tests.images import image_folder, png_bytes
from tests.integration.conftest import REFERENCE_BUCKET, REFERENCE_PREFIX
from tests.integration.test_image_jobs import PREPROCESSING, _classifier_onnx, _finished, _ready
from tests.servers import REPO_ROOT
from worker.io.images import preprocess

pytestmark = pytest.mark.integration


@pytest.fixture
def api(deployment_compose):
    base, key = deployment_compose
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def user_bucket(s3_endpoint: str):
    """The user's own bucket on moto (the workers read it with their S3 settings)."""
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    client.create_bucket(Bucket=REFERENCE_BUCKET)
    return client


def _upload_prefix(client, members: list[tuple[str, bytes]]) -> tuple[str, str]:
    """Put ``members`` under a new allowed prefix; returns (uri, key prefix)."""
    prefix = f"allowed/{uuid.uuid4().hex[:8]}/"
    for name, data in members:
        client.put_object(Bucket=REFERENCE_BUCKET, Key=prefix + name.removeprefix("data/"), Body=data)
    return REFERENCE_PREFIX + prefix.removeprefix("allowed/"), prefix


def _keys(client, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=REFERENCE_BUCKET, Prefix=prefix).get("Contents", [])]


def _register(api, uri: str) -> dict:
    response = api.post("/v1/datasets", json={"uri": uri})
    assert response.status_code == 202, response.text
    return _ready(api, "datasets", response.json()["id"])


def _spec(model_id: str, dataset_id: str) -> dict:
    return {
        "model_id": model_id,
        "dataset_id": dataset_id,
        "preprocessing": PREPROCESSING,
        "pipeline": [{"prune_channels": {"criterion": "l1", "ratio": 0.3}}, {"finetune": {"epochs": 1, "lr": 0.01}}],
        "training": {"batch_size": 8},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_accuracy_drop": 100},
    }


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory) -> Path:
    """A small CNN trained on the training images of ``image_folder(3, 6, 14, split=True)``."""
    path = tmp_path_factory.mktemp("reference-model") / "cnn.onnx"
    _classifier_onnx(image_folder(classes=3, per_class=6, size=14, split=True), path)
    return path


@pytest.fixture
def model_id(api, cnn_onnx: Path) -> str:
    model = api.post("/v1/models", files={"file": ("cnn.onnx", cnn_onnx.read_bytes())})
    assert model.status_code == 202, model.text
    assert _ready(api, "models", model.json()["id"])["status"] == "ready"
    return model.json()["id"]


def test_a_prefix_of_class_folders_is_pruned_end_to_end_and_deleting_it_keeps_the_objects(
    api, user_bucket, model_id, s3_endpoint
) -> None:
    members = image_folder(classes=3, per_class=6, size=14, split=True)  # 4 train + 2 val per class
    uri, prefix = _upload_prefix(user_bucket, members)
    dataset = _register(api, uri)
    assert dataset["status"] == "ready", dataset
    assert dataset["source_uri"] == uri and dataset["size_bytes"] == sum(len(d) for _, d in members)
    assert dataset["info"]["images"]["classes"] == ["class0", "class1", "class2"]
    assert dataset["info"]["reference"]["objects"] == dataset["info"]["reference"]["decoded"] == 18

    job = api.post("/v1/jobs", json=_spec(model_id, dataset["id"]))
    assert job.status_code == 202, job.text
    done = _finished(api, job.json()["id"])
    assert done["status"] == "succeeded", done
    report = api.get(f"/v1/jobs/{done['id']}/report").json()
    assert report["dataset"]["name"] == uri and (report["dataset"]["train"], report["dataset"]["val"]) == (12, 6)

    onnx_bytes = api.get(f"/v1/jobs/{done['id']}/artifacts/model.onnx", follow_redirects=True).content
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    params = PreprocessingParams(**PREPROCESSING)
    val = sorted((n, d) for n, d in members if "/val/" in n)
    x = np.stack([preprocess(Image.open(io.BytesIO(d)), params) for _, d in val]).astype(np.float32)
    labels = np.array([int(n.split("/class")[1].split("/")[0]) for n, _ in val])
    predicted = session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1)
    assert report["accuracy"]["final"] == pytest.approx(100.0 * float((predicted == labels).mean()))

    assert api.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert api.get(f"/v1/datasets/{dataset['id']}").status_code == 404
    assert len(_keys(user_bucket, prefix)) == 18  # the user's objects are untouched
    artifacts = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    manifest = f"artifacts/uploads/datasets/{dataset['id']}"
    assert artifacts.list_objects_v2(Bucket="shears-test", Prefix=manifest).get("KeyCount") == 0


def test_hostile_references_end_with_a_named_code(api, user_bucket, model_id) -> None:
    outside = api.post("/v1/datasets", json={"uri": f"s3://{REFERENCE_BUCKET}/private/pets/"})
    assert outside.status_code == 403 and outside.json()["type"].endswith("/reference-not-allowed"), outside.text
    own = api.post("/v1/datasets", json={"uri": "s3://shears-test/artifacts/uploads/"})
    assert own.status_code == 403 and "own storage" in own.json()["detail"], own.text

    empty_uri, _ = _upload_prefix(user_bucket, [])
    corrupt_uri, _ = _upload_prefix(user_bucket, [("a.png", png_bytes()), ("cut.png", png_bytes(32, 32)[:90])])
    for uri, code, named in ((empty_uri, "no-images", "holds no images"), (corrupt_uri, "corrupt-image", "cut.png")):
        dataset = _register(api, uri)
        assert (dataset["status"], dataset["error"]["code"]) == ("invalid", code), dataset
        assert named in dataset["error"]["message"]

    members = image_folder(classes=3, per_class=6, size=14, split=True)
    uri, prefix = _upload_prefix(user_bucket, members)
    dataset = _register(api, uri)
    assert dataset["status"] == "ready", dataset
    changed = f"{prefix}val/class1/5.png"
    user_bucket.put_object(Bucket=REFERENCE_BUCKET, Key=changed, Body=png_bytes(14, 14, seed=7, pattern=1))
    done = _finished(api, api.post("/v1/jobs", json=_spec(model_id, dataset["id"])).json()["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "input-changed"), done
    assert "val/class1/5.png" in done["error"]["message"] and "register the dataset again" in done["error"]["message"]


def test_the_reference_ci_example_and_the_cli_prune_a_prefix_that_stays_in_the_bucket(
    deployment_compose, api, user_bucket, cnn_onnx: Path, tmp_path: Path
) -> None:
    base, key = deployment_compose
    uri, _ = _upload_prefix(user_bucket, image_folder(classes=3, per_class=6, size=14, split=True))
    (tmp_path / "model.onnx").write_bytes(cnn_onnx.read_bytes())
    spec = {k: v for k, v in _spec("", "").items() if k not in ("model_id", "dataset_id")}
    (tmp_path / "images.yaml").write_text(json.dumps(spec))  # JSON is YAML
    env = {**os.environ, "SHEARS_URL": base, "SHEARS_API_KEY": key, "DATASET_URI": uri, "SPEC": "images.yaml"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"

    run = subprocess.run(
        ["bash", str(REPO_ROOT / "examples" / "ci-reference.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "pruned" / "model.onnx").stat().st_size > 0
    assert json.loads((tmp_path / "pruned" / "report.json").read_text())["dataset"]["name"] == uri

    cli = subprocess.run(
        [sys.executable, "-m", "service.cli", "submit", "model.onnx", "--dataset", uri, "--spec", "images.yaml"]
        + ["--wait", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    job = json.loads(cli.stdout)
    assert job["status"] == "succeeded"
    assert api.get(f"/v1/datasets/{job['dataset_id']}").json()["source_uri"] == uri
