"""The API process never imports torch (nor the engine): uploads are checked by the torch-free
intake, the heavy work happens in workers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    import numpy as np
    from fastapi.testclient import TestClient
    from service.api.deps import hash_key
    from service.core.config import Settings
    from service.main import create_app
    from tests.factories import npz_bytes, tiny_onnx_bytes

    settings = Settings(data_dir=sys.argv[1], api_keys={hash_key("k" * 20): "t"})
    with TestClient(create_app(settings, reaper=False), headers={"Authorization": "Bearer " + "k" * 20}) as client:
        model = client.post("/v1/models", files={"file": ("m.onnx", tiny_onnx_bytes())})
        dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())})
        bad = client.post("/v1/models", files={"file": ("m.pt", b"\\x80\\x04K\\x01.")})
        job = client.post("/v1/jobs", json={"model_id": model.json()["id"], "dataset_id": dataset.json()["id"]})
        multipart = client.post("/v1/jobs", files={"model": ("m.onnx", tiny_onnx_bytes())},
                                data={"spec": json.dumps({"dataset": {"builtin": "digits"}})})
        client.get("/openapi.json")
    statuses = [r.status_code for r in (model, dataset, bad, job, multipart)]
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torch_pruning", "onnx2torch", "worker"})
    print(json.dumps({"statuses": statuses, "heavy": heavy}))
    """
)


def test_serving_uploads_and_jobs_never_imports_torch_or_the_engine(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [202, 202, 422, 202, 202]  # the requests really ran
    assert result["heavy"] == []
