"""Upload inspections run on their own queue with a time limit (real Redis, real worker)."""

from __future__ import annotations

from pathlib import Path

import redis
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from service.api.deps import hash_key
from service.core.config import Settings
from service.main import create_app
from tests import servers
from tests.factories import npz_bytes, tiny_onnx_bytes

KEY = "inspect-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _long_onnx(nodes: int) -> bytes:
    """A valid ONNX chain of ``nodes`` Relu nodes: small on disk, slow to convert."""
    chain = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(nodes)]
    graph = helper.make_graph(
        chain,
        "long",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, ["N", 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_inspections_are_queued_apart_from_jobs(service_settings: Settings) -> None:
    # Its own Redis database, which no worker consumes: the messages stay where they were sent.
    settings = service_settings.model_copy(
        update={
            "broker_url": service_settings.broker_url.rsplit("/", 1)[0] + "/3",
            "api_keys": {hash_key(KEY): "q"},
        }
    )
    broker = redis.Redis.from_url(settings.broker_url)
    broker.flushdb()
    with TestClient(create_app(settings, reaper=False), headers=AUTH) as client:
        model = client.post("/v1/models", files={"file": ("m.onnx", tiny_onnx_bytes())})
        assert model.status_code == 202, model.text
        assert (broker.llen(settings.inspect_queue), broker.llen(settings.task_queue)) == (1, 0)
        job = client.post("/v1/jobs", json={"model_id": model.json()["id"], "dataset": {"builtin": "digits"}})
        assert job.status_code == 202, job.text
        assert (broker.llen(settings.inspect_queue), broker.llen(settings.task_queue)) == (1, 1)


def test_an_inspection_over_its_time_limit_marks_the_upload_invalid_and_the_worker_goes_on(
    tmp_path: Path, server_logs: Path
) -> None:
    settings = Settings(data_dir=tmp_path, api_keys={hash_key(KEY): "q"}, inspect_time_limit_s=30)
    worker = servers.start_celery_worker(server_logs, settings, name="inspect-worker")
    try:
        with TestClient(create_app(settings, reaper=False), headers=AUTH) as client:

            def status(kind: str, item: dict) -> str:
                return client.get(f"/v1/{kind}/{item['id']}").json()["status"]

            # The first inspection imports the engine (torch); not what this test measures.
            warm = client.post("/v1/models", files={"file": ("m.onnx", tiny_onnx_bytes())}).json()
            servers.wait_until(lambda: status("models", warm) != "validating", 300, "the first inspection")
            # 150,000 nodes take minutes to convert on this machine (20,000: 17 s), far past 30 s.
            slow = client.post("/v1/models", files={"file": ("long.onnx", _long_onnx(150_000))}).json()
            servers.wait_until(lambda: status("models", slow) != "validating", 300, "the slow inspection")
            refused = client.get(f"/v1/models/{slow['id']}").json()
            assert refused["status"] == "invalid"
            assert refused["error"]["code"] == "inspection-timeout"
            assert "SHEARS_INSPECT_TIME_LIMIT_S" in refused["error"]["message"]
            data = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())}).json()
            servers.wait_until(lambda: status("datasets", data) != "validating", 180, "the next inspection")
            assert status("datasets", data) == "ready"
            assert worker.alive()
    finally:
        worker.stop()
