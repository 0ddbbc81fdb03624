"""Two worker hosts: a job whose host dies resumes on the other from the checkpoint in S3.

Each worker runs in its own network namespace (tests.netns) with its own data directory, so
the only things the two share are what real hosts share: Redis, the S3 server and PostgreSQL,
reached over a veth/bridge (Redis and moto listen on the bridge address; the machine's
PostgreSQL, which listens on loopback, through a TCP relay on the bridge). The API runs in
the test's namespace. The worker running the job is SIGKILLed with its pool; the other one
must pick the job up after the lease runs out and continue from the stored epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import boto3
import httpx
import pytest

from service.api.deps import hash_key
from service.core.config import Settings
from service.core.queue import make_celery
from tests import netns, servers
from tests.factories import digits_mlp_onnx

API_KEY = "multi-host-key-0123456789abcdef"
BUCKET = "shears-hosts"
EPOCHS = 10
STAGE = "0-finetune"


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory, server_logs: Path, announce):
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    with netns.hosts(2) as hosts, servers.postgres_database() as database_url:
        started: list[servers.Process] = []
        relay = netns.TcpRelay(hosts.host_ip, ("127.0.0.1", 5432))
        try:
            redis_proc, redis_url = servers.start_redis(server_logs, host=hosts.host_ip)
            started.append(redis_proc)
            moto_proc, endpoint = servers.start_moto(server_logs, host=hosts.host_ip)
            started.append(moto_proc)
            servers.create_bucket(endpoint, BUCKET)
            shared = Settings(
                data_dir=tmp_path_factory.mktemp("api-host"),
                database_url=database_url.replace("127.0.0.1:5432", f"{hosts.host_ip}:{relay.address[1]}"),
                broker_url=redis_url,
                result_backend=redis_url,
                storage_uri=f"s3://{BUCKET}/artifacts",
                s3_endpoint_url=endpoint,
                s3_access_key_id="test",
                s3_secret_access_key="test",
                api_keys={hash_key(API_KEY): "ci"},
                lease_s=6.0,
                reaper_interval_s=0.5,
                progress_interval_s=0.2,
            )
            api, base = servers.start_api(server_logs, shared, "hosts-api")
            started.append(api)
            workers = []
            for host in hosts.names:
                on_host = shared.model_copy(update={"data_dir": tmp_path_factory.mktemp(f"{host}-data")})
                proc = servers.start_celery_worker(
                    server_logs, on_host, f"worker-{host}", wait=False, prefix=tuple(hosts.argv(host, []))
                )
                proc.data_dir = on_host.data_dir
                started.append(proc)
                workers.append(proc)
            for proc in workers:
                servers.wait_for_worker(proc, shared)
            announce(f"two worker hosts {hosts.names} on bridge {hosts.host_ip}; api {base}")
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as client:
                yield shared, client, workers, endpoint
        finally:
            for proc in reversed(started):
                proc.stop()
            relay.close()


def _job(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def _wait_job(client: httpx.Client, job_id: str, condition, timeout: float, what: str) -> dict:
    seen: dict = {}

    def check() -> bool:
        seen.clear()
        seen.update(_job(client, job_id))
        return condition(seen)

    servers.wait_until(check, timeout, f"job {job_id}: {what}", interval=0.1)
    return dict(seen)


def _epoch(job: dict) -> int:
    return int((job.get("progress") or {}).get("epoch") or 0)


def _holder(settings: Settings, workers: list[servers.Process], job_id: str) -> servers.Process:
    control = make_celery(settings).control
    found: list[servers.Process] = []

    def ask() -> bool:
        active = control.inspect(timeout=1.0).active() or {}
        found[:] = [
            proc
            for proc in workers
            for host, tasks in active.items()
            if host.startswith(proc.hostname + "@") and any(t.get("args") == [job_id] for t in tasks)
        ]
        return len(found) == 1

    servers.wait_until(ask, 60, f"the worker running {job_id}", interval=0.2)
    return found[0]


def _kill(proc: servers.Process) -> None:
    """SIGKILL the worker and its pool processes: nothing gets a chance to clean up."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.popen.wait(30)


def _stored_keys(endpoint: str, prefix: str) -> list[str]:
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    return [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"artifacts/{prefix}").get("Contents", [])]


def test_a_job_whose_worker_host_is_killed_resumes_on_the_other_host_from_the_stored_checkpoint(two_hosts) -> None:
    settings, client, workers, endpoint = two_hosts
    model = client.post("/v1/models", files={"file": ("mlp.onnx", digits_mlp_onnx())})
    assert model.status_code == 202, model.text
    spec = {
        "model_id": model.json()["id"],
        "dataset": {"builtin": "digits"},
        "pipeline": [{"finetune": {"epochs": EPOCHS, "lr": 0.01}}],
        "training": {"batch_size": 1},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_accuracy_drop": 100.0},
    }
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    before = _wait_job(client, job_id, lambda j: j["status"] == "running" and _epoch(j) >= 2, 300, "epoch 2")
    victim = _holder(settings, workers, job_id)
    survivor = next(proc for proc in workers if proc is not victim)
    checkpoints = f"jobs/{job_id}/checkpoints/"
    assert f"artifacts/{checkpoints}manifest.json" in _stored_keys(endpoint, checkpoints)
    _kill(victim)  # SIGKILL, pool and all: the host is gone
    killed_at = max(_epoch(before), _epoch(_job(client, job_id)))

    job = _wait_job(client, job_id, lambda j: j["status"] in {"succeeded", "failed", "cancelled"}, 600, "the end")
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2, "the job ran more than once after the kill, or was never retried"
    resumed = job["result"]["resumed_from"]
    assert resumed["stage"] == STAGE and resumed["attempt"] == 1
    assert killed_at <= resumed["epoch"] < EPOCHS, f"resumed at {resumed}, but epoch {killed_at} was reported"

    report = json.loads(client.get(f"/v1/jobs/{job_id}/artifacts/report.json", follow_redirects=True).content)
    assert report["resumed_from"] == resumed
    trained = report["training_curves"][STAGE]["epoch"]
    assert trained == list(range(resumed["epoch"] + 1, EPOCHS + 1)), "epochs lost or run twice after the resume"
    assert {a["name"] for a in job["artifacts"]} >= {"model.onnx", "report.json"}
    assert (victim.data_dir / "checkpoints" / job_id).is_dir()  # the dead host's disk is never read again
    servers.wait_until(lambda: not _stored_keys(endpoint, checkpoints), 60, "the stored checkpoints to be removed")
    servers.wait_until(
        lambda: not (survivor.data_dir / "checkpoints" / job_id).exists(),
        60,
        "the survivor's local checkpoints to be removed",
    )
