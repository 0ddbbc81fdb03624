"""/readyz against real services, and the embedded ``shears up`` command end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from service.core.config import Settings
from service.main import create_app
from tests import servers


def test_readyz_reports_postgres_redis_and_s3_healthy(service_settings: Settings) -> None:
    with TestClient(create_app(service_settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert set(checks) == {"database", "broker", "storage"}
    assert all(check["ok"] for check in checks.values())


def test_readyz_names_the_broker_when_redis_is_unreachable(service_settings: Settings) -> None:
    dead = f"redis://127.0.0.1:{servers.free_port()}/0"
    settings = service_settings.model_copy(update={"broker_url": dead})
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_shears_up_serves_a_ready_embedded_service_with_a_worker(tmp_path: Path, server_logs, announce) -> None:
    port = servers.free_port()
    up = servers.Process(
        "shears-up",
        [sys.executable, "-m", "service.cli", "up", "--port", str(port), "--data-dir", str(tmp_path)],
        server_logs,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        servers.wait_until(lambda: up.ensure_alive() and httpx.get(f"{base}/healthz").is_success, 90, "shears up")
        announce(f"shears up pid {up.pid} listening at {base}")
        response = httpx.get(f"{base}/readyz", timeout=10)
        assert response.status_code == 200, response.text
        assert all(check["ok"] for check in response.json()["checks"].values())
        assert (tmp_path / "shears.db").is_file()
        assert "Shears listening on " + base in up.log_path.read_text()
    finally:
        up.stop()
