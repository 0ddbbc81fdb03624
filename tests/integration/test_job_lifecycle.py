"""A running job through its life: progress over SSE, cancellation mid-training, the signed
webhook, and metrics — against uvicorn + celery worker + redis + moto + PostgreSQL."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from service.core.webhooks import verify
from tests import servers
from tests.integration.conftest import WEBHOOK_SECRET


@pytest.fixture
def api(deployment_compose):
    base, key = deployment_compose
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        yield client


@pytest.fixture
def model_id(api, model_and_data) -> str:
    model_path, _, _ = model_and_data
    model = api.post("/v1/models", files={"file": ("model.onnx", model_path.read_bytes())}).json()
    return model["id"]


def _terminal(api, job_id: str) -> dict:
    servers.wait_until(
        lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] in {"succeeded", "failed", "cancelled"},
        180,
        f"job {job_id} to end",
        interval=0.2,
    )
    return api.get(f"/v1/jobs/{job_id}").json()


def test_a_running_job_is_cancelled_inside_its_training_loop(api, model_id) -> None:
    spec = {"model_id": model_id, "dataset": {"builtin": "digits"}, "pipeline": [{"finetune": {"epochs": 500}}]}
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    servers.wait_until(
        lambda: (api.get(f"/v1/jobs/{job_id}").json().get("progress") or {}).get("epoch", 0) >= 1,
        120,
        "the job to train an epoch",
        interval=0.1,
    )

    cancelling = api.post(f"/v1/jobs/{job_id}/cancel")

    assert cancelling.status_code == 202
    assert cancelling.json()["status"] == "cancelling"
    job = _terminal(api, job_id)
    assert job["status"] == "cancelled"
    assert job["progress"]["epoch"] < 500
    assert api.get(f"/v1/jobs/{job_id}/artifacts").status_code == 409


def test_progress_streams_as_server_sent_events_until_the_job_ends(api, model_id) -> None:
    spec = {"model_id": model_id, "dataset": {"builtin": "digits"}, "pipeline": [{"finetune": {"epochs": 60}}]}
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    events = []
    with api.stream("GET", f"/v1/jobs/{job_id}/events", timeout=180) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    statuses = [event["status"] for event in events]
    assert statuses[-1] == "succeeded"
    assert "running" in statuses
    epochs = [e["progress"].get("epoch") for e in events if e["status"] == "running" and e["progress"].get("epoch")]
    assert epochs == sorted(epochs) and epochs, events


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_finished_job_calls_its_webhook_with_a_valid_signature(api, model_id) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received.clear()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        spec = {
            "model_id": model_id,
            "dataset": {"builtin": "digits"},
            "pipeline": [{"finetune": {"epochs": 1}}],
            "callback_url": url,
        }
        job_id = api.post("/v1/jobs", json=spec).json()["id"]
        assert _terminal(api, job_id)["status"] == "succeeded"
        servers.wait_until(lambda: _Receiver.received, 30, "the webhook")
    finally:
        server.shutdown()
    headers, body = _Receiver.received[0]
    payload = json.loads(body)
    assert payload["id"] == job_id and payload["status"] == "succeeded"
    assert verify(WEBHOOK_SECRET, headers["Shears-Webhook-Id"], headers["Shears-Signature"], body)
    assert not verify("another-secret", headers["Shears-Webhook-Id"], headers["Shears-Signature"], body)
    assert not verify(WEBHOOK_SECRET, headers["Shears-Webhook-Id"], headers["Shears-Signature"], body + b" ")


def test_metrics_expose_jobs_by_status_and_request_latency(api) -> None:
    api.get("/v1/jobs")
    text = api.get("/metrics").text
    assert 'shears_jobs{status="queued"}' in text
    assert "shears_http_request_seconds_bucket" in text
    assert "shears_queue_depth" in text
