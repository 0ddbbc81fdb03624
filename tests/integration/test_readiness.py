"""/readyz against real services, and the embedded ``shears up`` command end to end."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient

from service.core.config import Settings
from service.main import create_app
from tests import servers


def test_readyz_reports_postgres_redis_s3_and_a_live_worker_healthy(service_settings: Settings, celery_worker) -> None:
    with TestClient(create_app(service_settings, reaper=False)) as client:
        servers.wait_until(lambda: client.get("/readyz").status_code == 200, 60, "a ready /readyz")
        response = client.get("/readyz")
    checks = response.json()["checks"]
    assert set(checks) == {"database", "broker", "storage", "worker"}
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
        servers.wait_until(lambda: httpx.get(f"{base}/readyz", timeout=10).is_success, 90, "a worker heartbeat")
        response = httpx.get(f"{base}/readyz", timeout=10)
        assert all(check["ok"] for check in response.json()["checks"].values())
        assert (tmp_path / "shears.db").is_file()
        assert "Shears listening on " + base in up.log_path.read_text()
    finally:
        up.stop()


def _embedded_settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, worker_heartbeat_s=0.5, worker_stale_s=3.0, worker_warm_imports=False)


def test_readyz_answers_503_no_live_worker_after_the_worker_is_killed(tmp_path: Path, server_logs) -> None:
    settings = _embedded_settings(tmp_path)
    worker = servers.start_celery_worker(server_logs, settings, name="doomed-worker")
    try:
        with TestClient(create_app(settings, reaper=False)) as client:
            servers.wait_until(lambda: client.get("/readyz").status_code == 200, 60, "readiness with a live worker")
            os.killpg(worker.pid, signal.SIGKILL)  # master and pool, as the OOM killer would
            servers.wait_until(
                lambda: client.get("/readyz").status_code == 503, 60, "readiness noticing the dead worker"
            )
            checks = client.get("/readyz").json()["checks"]
    finally:
        worker.stop()
    assert checks["worker"]["ok"] is False
    assert "no live worker" in checks["worker"]["detail"]
    assert all(checks[name]["ok"] for name in ("database", "broker", "storage"))


def _worker_pids(log: str) -> list[int]:
    return [int(a or b) for a, b in re.findall(r"worker (?:pid (\d+), log|restarted: pid (\d+))", log)]


def _is_gone_or_reaped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie was never reaped
    except FileNotFoundError:
        return True


def test_shears_up_restarts_a_worker_killed_with_sigkill_and_keeps_processing(
    tmp_path: Path, server_logs, announce
) -> None:
    port = servers.free_port()
    env = {"SHEARS_WORKER_HEARTBEAT_S": "0.5", "SHEARS_WORKER_STALE_S": "3", "SHEARS_WORKER_WARM_IMPORTS": "false"}
    up = servers.Process(
        "shears-up-supervised",
        [sys.executable, "-m", "service.cli", "up", "--port", str(port), "--data-dir", str(tmp_path)],
        server_logs,
        env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        servers.wait_until(lambda: up.ensure_alive() and httpx.get(f"{base}/readyz").is_success, 120, "shears up")
        first = _worker_pids(up.log_path.read_text())[0]
        announce(f"shears up pid {up.pid}; killing its worker pid {first} with SIGKILL")
        os.kill(first, signal.SIGKILL)
        servers.wait_until(lambda: len(_worker_pids(up.log_path.read_text())) >= 2, 120, "a restarted worker")
        second = _worker_pids(up.log_path.read_text())[1]
        assert second != first
        assert _is_gone_or_reaped(first)
        data = tmp_path / "data.npz"
        rng = np.random.default_rng(0)
        np.savez(data, x=rng.random((40, 1, 4, 4), dtype=np.float32), y=np.arange(40) % 2)
        headers = {"Authorization": f"Bearer {(tmp_path / 'api-key').read_text().strip()}"}
        with open(data, "rb") as stream:
            created = httpx.post(
                f"{base}/v1/datasets", headers=headers, files={"file": ("data.npz", stream)}, timeout=60
            )
        assert created.status_code == 202, created.text

        def inspected() -> bool:
            return (
                httpx.get(f"{base}/v1/datasets/{created.json()['id']}", headers=headers, timeout=30).json()["status"]
                != "validating"
            )

        servers.wait_until(inspected, 180, "the restarted worker inspecting an upload")
        servers.wait_until(
            lambda: httpx.get(f"{base}/readyz", timeout=30).is_success, 120, "readiness after the restart"
        )
        assert httpx.get(f"{base}/v1/datasets/{created.json()['id']}", headers=headers).json()["status"] == "ready"
        assert up.alive()
    finally:
        up.stop()
