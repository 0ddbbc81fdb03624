"""Real faults injected into real processes on loopback: workers killed (SIGKILL) or stopped
(SIGTERM) mid-job, a job outliving the broker's visibility timeout, time limits, memory
limits, Redis and S3 going away, the database refusing connections, the API killed or the
client gone mid-upload. Nothing of ours is mocked; every wait polls a condition with a
deadline (tests.servers.wait_until).

The module runs its own redis-server, moto S3 server, PostgreSQL database and uvicorn API
(faults here kill or freeze them, so the session's shared servers are not used), with short
timings: lease 3 s, reaper every 0.5 s, visibility timeout 2 s, S3 timeout 1 s.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import psycopg
import pytest

from service.api.deps import hash_key
from service.api.uploads import BLOCK_BYTES
from service.core.config import Settings
from service.core.dispatch import TIME_LIMIT_GRACE_S
from service.core.queue import PING_TASK, make_celery
from tests import servers
from tests.factories import digits_mlp_onnx

API_KEY = "faults-key-0123456789abcdef"
BUCKET = "shears-faults"
TERMINAL = {"succeeded", "failed", "cancelled"}
# Upper bounds for waits on a loaded machine (load average 20 on 2 cores makes a 5 s job take
# a minute): generous, since a passing test never waits them out.
LONG = 300
SHORT = 60


@dataclass
class Stack:
    settings: Settings
    logs: Path
    redis: servers.Process
    redis_port: int
    moto: servers.Process
    s3_endpoint: str
    database: str
    api: servers.Process
    base: str
    client: httpx.Client
    models: dict[str, str] = field(default_factory=dict)
    workers: list[servers.Process] = field(default_factory=list)

    def start_workers(self, *names: str) -> list[servers.Process]:
        """Start workers in parallel (each ~3 s of imports) and wait until all answer."""
        started = [servers.start_celery_worker(self.logs, self.settings, name, wait=False) for name in names]
        self.workers += started
        for proc in started:
            servers.wait_for_worker(proc, self.settings)
        return started


def _s3(endpoint: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory, server_logs: Path, announce):
    servers.ensure_postgres()
    redis_proc, redis_url = servers.start_redis(server_logs)
    moto_proc, endpoint = servers.start_moto(server_logs)
    servers.create_bucket(endpoint, BUCKET)
    with servers.postgres_database() as database_url:
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("faults-data"),
            database_url=database_url,
            broker_url=redis_url,
            result_backend=redis_url,
            storage_uri=f"s3://{BUCKET}/artifacts",
            s3_endpoint_url=endpoint,
            s3_access_key_id="test",
            s3_secret_access_key="test",
            api_keys={hash_key(API_KEY): "ci"},
            lease_s=3.0,
            reaper_interval_s=0.5,
            progress_interval_s=0.2,
            max_attempts=2,
            dispatch_retry_s=3.0,
            broker_visibility_timeout_s=2.0,
            s3_timeout_s=1.0,
            s3_max_attempts=2,
            worker_memory_limit_mb=3000,
        )
        api, base = servers.start_api(server_logs, settings, "faults-api")
        announce(f"faults stack: redis {redis_url}, moto {endpoint}, api {base} (pid {api.pid})")
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        s = Stack(
            settings,
            server_logs,
            redis_proc,
            int(redis_url.rsplit(":", 1)[1].split("/")[0]),
            moto_proc,
            endpoint,
            database_url.rsplit("/", 1)[1],
            api,
            base,
            client,
        )
        for name, content in (("mlp", digits_mlp_onnx()), ("greedy", digits_mlp_onnx(tile=65536))):
            response = client.post("/v1/models", files={"file": (f"{name}.onnx", content)})
            assert response.status_code == 202, response.text
            s.models[name] = response.json()["id"]
        try:
            yield s
        finally:
            client.close()
            for proc in s.workers:
                proc.stop()
            s.api.stop()
            s.redis.stop()
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.moto.pid, signal.SIGCONT)
            s.moto.stop()


def _spec(stack: Stack, epochs: int, model: str = "mlp", **extra) -> dict:
    return {
        "model_id": stack.models[model],
        "dataset": {"builtin": "digits"},
        "pipeline": [{"finetune": {"epochs": epochs, "lr": 0.01}}],
        "training": {"batch_size": 1},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_accuracy_drop": 100.0},
        **extra,
    }


def _post(stack: Stack, spec: dict) -> str:
    response = stack.client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _job(stack: Stack, job_id: str) -> dict:
    return stack.client.get(f"/v1/jobs/{job_id}").json()


def _wait(stack: Stack, job_id: str, condition, timeout: float, what: str) -> dict:
    seen: dict = {}

    def check() -> bool:
        seen.update(_job(stack, job_id))
        return condition(seen)

    servers.wait_until(check, timeout, f"job {job_id}: {what}", interval=0.05)
    return dict(seen)


def _finished(stack: Stack, job_id: str, timeout: float = LONG) -> dict:
    return _wait(stack, job_id, lambda j: j["status"] in TERMINAL, timeout, "a terminal status")


def _epoch(job: dict) -> int:
    return int((job.get("progress") or {}).get("epoch") or 0)


def _holder(stack: Stack, job_id: str) -> servers.Process:
    """The worker process executing ``job_id``, asked through Celery's remote control."""
    control = make_celery(stack.settings).control
    found: list[servers.Process] = []

    def ask() -> bool:
        active = control.inspect(timeout=1.0).active() or {}
        found[:] = [
            proc
            for proc in stack.workers
            if proc.alive()
            for host, tasks in active.items()
            if host.startswith(proc.hostname + "@") and any(task.get("args") == [job_id] for task in tasks)
        ]
        return len(found) == 1

    servers.wait_until(ask, SHORT, f"the worker running {job_id}", interval=0.2)
    return found[0]


def _kill(proc: servers.Process) -> None:
    """SIGKILL the worker and its pool processes: nothing gets a chance to clean up."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)


def _objects(stack: Stack, prefix: str) -> list[str]:
    response = _s3(stack.s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix=f"artifacts/{prefix}")
    return [item["Key"] for item in response.get("Contents", [])]


def _assert_cleaned(stack: Stack, job: dict) -> None:
    """A failed job leaves no artifact, no work directory and no checkpoint behind."""
    assert job["artifacts"] == []
    assert _objects(stack, f"jobs/{job['id']}/") == []
    _wait_local_cleanup(stack, job["id"])
    response = stack.client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")
    assert response.status_code == 409 and response.json()["type"].endswith("/job-not-succeeded")


def _wait_local_cleanup(stack: Stack, job_id: str) -> None:
    """The worker removes its work directory and checkpoints right after it flips the row."""
    data = stack.settings.data_dir
    servers.wait_until(
        lambda: not (data / "work" / job_id).exists() and not (data / "checkpoints" / job_id).exists(),
        SHORT,
        f"the temporary files of {job_id} to be removed",
    )


def _task_ids(log: str, task: str) -> set[str]:
    return set(re.findall(rf"{re.escape(task)}\[([0-9a-f-]+)\]", log))


# ----------------------------------------------------------------------------- two workers


@pytest.fixture(scope="module")
def pair(stack: Stack) -> list[servers.Process]:
    return stack.start_workers("faults-worker-a", "faults-worker-b")


def test_a_job_outliving_the_visibility_timeout_runs_once(stack: Stack, pair) -> None:
    """Redis hands the unacknowledged task to the idle worker after 2 s; its claim is refused
    (compare-and-set on the row, lease renewed by the running one) and the job runs once."""
    # 12 epochs: ~6 s on a quiet machine (5 epochs took 2.5 s once the job's own overheads
    # shrank), well past the 2 s visibility timeout
    job_id = _post(stack, _spec(stack, epochs=12))
    job = _finished(stack, job_id)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1

    def run_job_ids(outcome: str) -> set[str]:  # Celery logs a task's return value just after the row flips
        return _task_ids(_holder_log_lines(stack, "succeeded in", f"'{outcome}'"), "shears.run_job")

    # the refused delivery of *this* job's task (an inspection task also returns 'skipped')
    servers.wait_until(
        lambda: run_job_ids("succeeded") & run_job_ids("skipped"),
        SHORT,
        "the running and the refused delivery of the job's task in the worker logs",
    )


def _holder_log_lines(stack: Stack, *needles: str) -> str:
    lines = []
    for proc in stack.workers:
        lines += [
            line for line in proc.log_path.read_text(errors="replace").splitlines() if all(n in line for n in needles)
        ]
    return "\n".join(lines)


def test_a_worker_killed_mid_job_is_replaced_and_the_job_resumes_from_its_checkpoint(stack: Stack, pair) -> None:
    job_id = _post(stack, _spec(stack, epochs=8))
    before = _wait(stack, job_id, lambda j: j["status"] == "running" and _epoch(j) >= 2, LONG, "epoch 2")
    victim = _holder(stack, job_id)
    assert (stack.settings.data_dir / "checkpoints" / job_id).is_dir()
    _kill(victim)
    stale = _job(stack, job_id)["progress"]  # the last progress the dead worker wrote
    killed_at = _epoch({"progress": stale})

    second = _wait(
        stack,
        job_id,
        lambda j: j["attempt"] == 2 and _epoch(j) > 0 and j["progress"] != stale,
        LONG,
        "the second attempt's first epoch",
    )
    job = _finished(stack, job_id)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2
    assert _epoch(second) > max(killed_at, before["progress"]["epoch"]), (
        "attempt 2 started over, not from the checkpoint"
    )
    _wait_local_cleanup(stack, job_id)  # checkpoints go once the job succeeded
    assert {a["name"] for a in job["artifacts"]} >= {"model.onnx", "report.json"}


def test_a_job_whose_workers_keep_dying_fails_worker_lost_after_max_attempts(stack: Stack, pair) -> None:
    stack.start_workers("faults-worker-c")
    job_id = _post(stack, _spec(stack, epochs=500))
    stale = None
    for attempt in (1, 2):
        _wait(
            stack,
            job_id,
            lambda j, a=attempt, s=stale: j["attempt"] == a and _epoch(j) > 0 and j["progress"] != s,
            LONG,
            f"attempt {attempt}",
        )
        _kill(_holder(stack, job_id))
        stale = _job(stack, job_id)["progress"]
    job = _finished(stack, job_id)
    assert job["status"] == "failed" and job["attempt"] == 2
    assert job["error"]["code"] == "worker-lost"
    assert "retry" in job["error"]["message"]


def test_sigterm_during_a_job_lets_it_finish_before_the_worker_exits(stack: Stack) -> None:
    (worker,) = stack.start_workers("faults-worker-d")
    job_id = _post(stack, _spec(stack, epochs=3))
    _wait(stack, job_id, lambda j: j["status"] == "running" and _epoch(j) >= 1, LONG, "training")
    assert _holder(stack, job_id) is worker
    os.kill(worker.pid, signal.SIGTERM)  # a deploy: Celery's warm shutdown
    job = _finished(stack, job_id)
    assert job["status"] == "succeeded" and job["attempt"] == 1, job
    servers.wait_until(lambda: not worker.alive(), SHORT, "the worker to exit")
    assert worker.popen.returncode == 0


# ----------------------------------------------------------------------------- one worker, many faults


@pytest.fixture(scope="module")
def worker(stack: Stack) -> servers.Process:
    (proc,) = stack.start_workers("faults-worker-w")
    return proc


def _next_job_succeeds(stack: Stack, worker: servers.Process) -> None:
    job = _finished(stack, _post(stack, _spec(stack, epochs=1, training={"batch_size": 64})))
    assert job["status"] == "succeeded", job
    assert worker.alive()


def test_a_job_past_its_time_limit_fails_timeout_and_cleans_up(stack: Stack, worker) -> None:
    """The worker counts time_limit_s from the job's start and checks it before every training
    step, so the job stops in ``finetune`` however long loading took on a loaded machine;
    Celery's soft limit (TIME_LIMIT_GRACE_S later) only backs it up."""
    job_id = _post(stack, _spec(stack, epochs=1000, time_limit_s=10))
    _wait(stack, job_id, lambda j: j["status"] != "queued", LONG, "a worker to start the job")
    job = _finished(stack, job_id, timeout=10 + TIME_LIMIT_GRACE_S + 120)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "timeout" and job["error"]["stage"].endswith("finetune")
    assert "time_limit_s" in job["error"]["message"]
    _assert_cleaned(stack, job)
    _next_job_succeeds(stack, worker)


def test_a_job_over_the_worker_memory_limit_fails_out_of_memory_and_the_worker_goes_on(stack: Stack, worker) -> None:
    job = _finished(stack, _post(stack, _spec(stack, epochs=1, model="greedy")))
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "out-of-memory"
    assert "batch_size" in job["error"]["message"]
    _assert_cleaned(stack, job)
    _next_job_succeeds(stack, worker)


def test_s3_down_during_the_upload_fails_storage_unavailable_without_partial_artifacts(stack: Stack, worker) -> None:
    job_id = _post(stack, _spec(stack, epochs=6))
    _wait(stack, job_id, lambda j: j["status"] == "running" and _epoch(j) >= 1, LONG, "training")  # inputs fetched
    os.kill(stack.moto.pid, signal.SIGSTOP)  # the endpoint stops answering (connections hang)
    try:
        job = _finished(stack, job_id)
    finally:
        os.kill(stack.moto.pid, signal.SIGCONT)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "storage-unavailable"
    assert "Submit the job again" in job["error"]["message"]
    assert job["artifacts"] == []
    response = stack.client.get(f"/v1/jobs/{job_id}/artifacts")
    assert response.status_code == 409
    _wait_local_cleanup(stack, job_id)
    _next_job_succeeds(stack, worker)


def test_redis_down_a_posted_job_is_kept_and_dispatched_when_redis_is_back(stack: Stack, worker) -> None:
    stack.redis.popen.send_signal(signal.SIGKILL)
    stack.redis.stop()
    # Not a wall-clock assertion: the answer must come at all (a send retrying the dead broker
    # would hang the request for minutes); a loaded machine may make it slow, hence the margin.
    try:
        response = stack.client.post(
            "/v1/jobs", json=_spec(stack, epochs=1, training={"batch_size": 64}), timeout=httpx.Timeout(30, read=180)
        )
    except httpx.ReadTimeout:
        pytest.fail("POST /v1/jobs hung on the dead broker")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert stack.client.get("/readyz").json()["checks"]["broker"]["ok"] is False
    assert _job(stack, job_id)["status"] == "queued"

    stack.redis, _ = servers.start_redis(stack.logs, port=stack.redis_port)  # empty: no persistence
    nonce = uuid.uuid4().hex
    canary = make_celery(stack.settings).send_task(PING_TASK, args=[nonce])
    assert canary.get(timeout=LONG)["nonce"] == nonce  # the worker consumes again
    job = _finished(stack, job_id)
    assert job["status"] == "succeeded", job


# ----------------------------------------------------------------------------- database and API


def test_a_database_outage_answers_503_problems_and_loses_nothing(stack: Stack) -> None:
    job_id = _post(stack, _spec(stack, epochs=1, training={"batch_size": 64}))
    before = stack.client.get("/v1/jobs").json()["items"]
    admin = psycopg.connect(servers.POSTGRES_ADMIN_URL, autocommit=True)
    try:
        admin.execute(f'ALTER DATABASE "{stack.database}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (stack.database,))
        for response in (
            stack.client.get(f"/v1/jobs/{job_id}"),
            stack.client.post("/v1/jobs", json=_spec(stack, epochs=1), headers={"Idempotency-Key": "db-down"}),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"].endswith("/database-unavailable")
            assert int(response.headers["retry-after"]) > 0
    finally:
        admin.execute(f'ALTER DATABASE "{stack.database}" ALLOW_CONNECTIONS true')
        admin.close()
    servers.wait_until(lambda: stack.client.get(f"/v1/jobs/{job_id}").status_code == 200, SHORT, "the API to recover")
    after = stack.client.get("/v1/jobs").json()["items"]
    assert [j["id"] for j in after] == [j["id"] for j in before]
    retried = stack.client.post("/v1/jobs", json=_spec(stack, epochs=1), headers={"Idempotency-Key": "db-down"})
    assert retried.status_code == 202  # the failed POST created nothing: its retry creates the job


def _partial_upload(base: str, sent: int = 2 * BLOCK_BYTES + 256 * 1024) -> socket.socket:
    """Start a 10 MiB multipart model upload and stop after ``sent`` bytes of it (more than
    the API gathers before it writes a block to disk, less than the whole body)."""
    host, port = base.removeprefix("http://").split(":")
    boundary = "shearsboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    total = len(head) + (10 << 20)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"POST /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n".encode()
        + head
        + b"\x08\x07"
        + b"\x00" * (sent - 2)
    )
    return sock


def _temp_uploads(stack: Stack) -> list[Path]:
    return list((stack.settings.data_dir / "tmp").glob("upload-*"))


def test_a_client_gone_mid_upload_leaves_no_model_and_no_temporary_file(stack: Stack) -> None:
    models = stack.client.get("/v1/models").json()["items"]
    sock = _partial_upload(stack.base)
    servers.wait_until(lambda: _temp_uploads(stack), SHORT, "the upload to reach the disk")
    sock.close()
    servers.wait_until(lambda: not _temp_uploads(stack), SHORT, "the temporary file to be removed")
    assert stack.client.get("/v1/models").json()["items"] == models


def test_an_api_killed_mid_upload_leaves_no_model_and_its_next_start_removes_the_temporary_file(stack: Stack) -> None:
    models = stack.client.get("/v1/models").json()["items"]
    doomed, base = servers.start_api(stack.logs, stack.settings, "faults-api-doomed")
    try:
        sock = _partial_upload(base)
        servers.wait_until(lambda: any(f"-{doomed.pid}-" in p.name for p in _temp_uploads(stack)), SHORT, "the upload")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.popen.wait(10)
        sock.close()
        assert any(f"-{doomed.pid}-" in p.name for p in _temp_uploads(stack))  # nothing could clean up
    finally:
        doomed.stop()
    assert stack.client.get("/v1/models").json()["items"] == models  # no half-written model
    successor, _ = servers.start_api(stack.logs, stack.settings, "faults-api-successor")
    try:
        assert not _temp_uploads(stack)
    finally:
        successor.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
