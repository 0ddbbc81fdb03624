"""The deployment check (`make test-deploy`): the project's images in the compose stack, for real.

1. Starts ``dockerd`` when none answers (installing Debian's docker.io / docker-compose when
   absent), builds the local base images (deploy/base-images.sh), copies the torch CPU wheel
   into the build context, builds the ``api`` and ``worker-cpu`` images from the Dockerfile.
2. Brings the compose stack up (docker-compose.yml + deploy/compose.local.yml: two API
   replicas, two CPU worker replicas, Redis, PostgreSQL, moto's S3 server in MinIO's place),
   published on 127.0.0.1 only, and waits for the healthchecks.
3. Through HTTP only: uploads a model and a dataset, runs a job to ``succeeded``, checks its
   artifacts and that the ONNX model scores the accuracy the report states.
4. Through the other API replica: runs a long job, ``docker kill``s the worker container running it, and checks that the
   other replica resumes it from the checkpoint in S3 and succeeds.
5. Tears the stack down (containers, network, volumes) and stops the dockerd it started,
   whatever happened. Prints the build and start times (recorded in BENCHMARKS.md).

Run as root: ``.venv/bin/python deploy/check.py``. Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.api.deps import hash_key  # noqa: E402
from tests.factories import digits_mlp_onnx  # noqa: E402
from tests.servers import free_port, wait_until  # noqa: E402

PROJECT = f"shears-check-{os.getpid()}"
API_KEY = "deploy-check-key-0123456789abcdef"
IMAGES = {
    "SHEARS_API_IMAGE": "shears-api:check",
    "SHEARS_WORKER_CPU_IMAGE": "shears-worker-cpu:check",
    "SHEARS_PYTHON_IMAGE": "shears-local/python:3.11-slim",
    "SHEARS_REDIS_IMAGE": "shears-local/redis:7",
    "SHEARS_POSTGRES_IMAGE": "shears-local/postgres:15",
    "SHEARS_MINIO_IMAGE": "shears-local/moto:5",
    "SHEARS_MC_IMAGE": "shears-local/moto:5",
}
TIMES: dict[str, float] = {}


def say(message: str) -> None:
    print(f"[deploy-check] {message}", flush=True)


def run(argv: list[str], *, env: dict | None = None, timeout: float = 3600, quiet: bool = False) -> str:
    """Run a command; raise with its output when it fails."""
    result = subprocess.run(
        argv, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    if not quiet and result.stdout.strip():
        print(result.stdout.rstrip(), flush=True)
    return result.stdout


@contextlib.contextmanager
def timed(name: str):
    start = time.monotonic()
    say(f"{name} ...")
    yield
    TIMES[name] = round(time.monotonic() - start, 1)
    say(f"{name}: {TIMES[name]} s")


# ----------------------------------------------------------------------------- docker engine


def docker_cli() -> str:
    """Debian's docker CLI (BuildKit built in) when present, else the one on PATH."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def docker_answers() -> bool:
    return subprocess.run([docker_cli(), "info"], capture_output=True).returncode == 0


def apt_install(*packages: str) -> None:
    install = ["apt-get", "install", "-y", "-q", *packages]
    if subprocess.run(install, capture_output=True).returncode != 0:
        run(["apt-get", "update", "-q"], quiet=True)
        run(install, quiet=True)


def ensure_dockerd(log_dir: Path) -> subprocess.Popen | None:
    """A docker engine that answers; returns the dockerd this check started (None: one ran)."""
    missing = [
        pkg
        for binary, pkg in (("dockerd", "docker.io"), ("docker-compose", "docker-compose"))
        if not shutil.which(binary)
    ]
    if missing:
        with timed("apt-get install " + " ".join(missing)):
            apt_install(*missing)
    if docker_answers():
        return None
    log = open(log_dir / "dockerd.log", "ab")
    proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: proc.poll() is None and docker_answers(), 180, "dockerd", interval=0.5)
    say(f"dockerd pid {proc.pid} started (log {log_dir / 'dockerd.log'})")
    return proc


def stop_dockerd(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
    say(f"dockerd pid {proc.pid} stopped")


# ----------------------------------------------------------------------------- images


def extra_ca(folder: Path) -> Path | None:
    """The machine's locally added CA certificates (a TLS-intercepting egress proxy) as one
    PEM file for the builds' pip, outside the build context; None when there are none."""
    found = sorted(Path("/usr/local/share/ca-certificates").rglob("*.crt"))
    if not found:
        return None
    pem = folder / "extra-ca.pem"
    pem.write_text("".join(path.read_text() for path in found))
    return pem


def build_images(ca: Path | None) -> None:
    env = {"DOCKER": docker_cli(), "DOCKER_BUILDKIT": "1", **({"EXTRA_CA": str(ca)} if ca else {})}
    with timed("base images (debootstrap, python, redis, postgres, moto)"):
        run(["bash", "deploy/base-images.sh"], env=env)
    wheels = ROOT / "deploy" / "wheels"
    if not list(wheels.glob("torch-2.13.0*.whl")):
        with timed("torch CPU wheel into the build context"):
            run([str(ROOT / ".venv/bin/pip"), "download", "-q", "torch==2.13.0", "--no-deps", "-d", str(wheels)])
    secret = ["--secret", f"id=extra_ca,src={ca}"] if ca else []
    for target, image in (("api", IMAGES["SHEARS_API_IMAGE"]), ("worker-cpu", IMAGES["SHEARS_WORKER_CPU_IMAGE"])):
        with timed(f"docker build --target {target}"):
            run(
                [
                    "nice",
                    "-n",
                    "10",
                    docker_cli(),
                    "build",
                    "-q",
                    *secret,
                    "--target",
                    target,
                    "-t",
                    image,
                    "--build-arg",
                    f"PYTHON_IMAGE={IMAGES['SHEARS_PYTHON_IMAGE']}",
                    ".",
                ],
                env=env,
            )
    sizes = run([docker_cli(), "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}"], quiet=True)
    say("images:\n" + "\n".join(line for line in sizes.splitlines() if ":check" in line or "shears-local" in line))


# ----------------------------------------------------------------------------- the stack


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    import socket

    for _ in range(100):
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports")


class Stack:
    """The compose project; API replicas publish ports from ``api_ports`` on 127.0.0.1 only."""

    def __init__(self, api_ports: range, s3_port: int) -> None:
        self.env = {
            **IMAGES,
            "SHEARS_API_PORT": f"127.0.0.1:{api_ports[0]}-{api_ports[-1]}",
            "SHEARS_S3_PORT": f"127.0.0.1:{s3_port}",
            "SHEARS_S3_PUBLIC_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "SHEARS_API_KEYS": json.dumps({hash_key(API_KEY): "deploy-check"}),
        }
        compose = ["docker-compose"] if shutil.which("docker-compose") else [docker_cli(), "compose"]
        self.compose = [
            *compose,
            "-p",
            PROJECT,
            "-f",
            "docker-compose.yml",
            "-f",
            "deploy/compose.local.yml",
            "--profile",
            "cpu",
        ]

    def __call__(self, *args: str, timeout: float = 600, quiet: bool = True) -> str:
        return run([*self.compose, *args], env=self.env, timeout=timeout, quiet=quiet)

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).split()

    def health(self, container: str) -> str:
        """The healthcheck's verdict; raises when the container is no longer running."""
        state = json.loads(run([docker_cli(), "inspect", "-f", "{{json .State}}", container], quiet=True))
        if state["Status"] in {"exited", "dead"}:
            raise RuntimeError(
                f"container {container[:12]} exited ({state['ExitCode']}):\n{self.logs(container)[-3000:]}"
            )
        return (state.get("Health") or {}).get("Status", "none")

    def wait_healthy(self, service: str, timeout: float) -> None:
        """Poll the service's containers' healthchecks; fail at once when one exits."""
        deadline = time.monotonic() + timeout
        while not all(self.health(c) == "healthy" for c in self.containers(service)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} not healthy in {timeout:.0f}s")
            time.sleep(1)

    def api_bases(self) -> list[str]:
        """The base URL of every API replica (the host port docker gave each)."""
        ports = [run([docker_cli(), "port", c, "8000"], quiet=True).split()[0] for c in self.containers("api")]
        return [f"http://{address}" for address in sorted(ports)]

    def logs(self, container: str) -> str:
        result = subprocess.run([docker_cli(), "logs", container], capture_output=True, text=True)
        return result.stdout + result.stderr


def dataset_npz() -> tuple[bytes, np.ndarray, np.ndarray]:
    """scikit-learn's digits as an upload (N, 1, 8, 8); returns it and the validation split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    buffer = io.BytesIO()
    np.savez(buffer, x_train=x[:1400], y_train=y[:1400], x_val=x[1400:], y_val=y[1400:])
    return buffer.getvalue(), x[1400:], y[1400:]


def upload(client: httpx.Client, resource: str, name: str, content: bytes) -> str:
    response = client.post(f"/v1/{resource}", files={"file": (name, content)})
    assert response.status_code == 202, response.text
    item_id = response.json()["id"]
    wait_until(
        lambda: client.get(f"/v1/{resource}/{item_id}").json()["status"] != "validating",
        300,
        f"{resource} inspection",
        interval=0.5,
    )
    checked = client.get(f"/v1/{resource}/{item_id}").json()
    assert checked["status"] == "ready", checked
    return item_id


def wait_job(client: httpx.Client, job_id: str, condition: Callable[[dict], bool], timeout: float, what: str) -> dict:
    seen: dict = {}

    def check() -> bool:
        seen.clear()
        seen.update(client.get(f"/v1/jobs/{job_id}").json())
        return condition(seen)

    wait_until(check, timeout, f"job {job_id}: {what}", interval=0.5)
    return dict(seen)


def finished(job: dict) -> bool:
    return job["status"] in {"succeeded", "failed", "cancelled"}


def epoch(job: dict) -> int:
    return int((job.get("progress") or {}).get("epoch") or 0)


def check_a_job(client: httpx.Client, model_id: str, dataset_id: str, x_val: np.ndarray, y_val: np.ndarray) -> None:
    """upload → job → artifacts → the accuracy the report states, measured on the ONNX model."""
    import onnxruntime

    spec = {
        "model_id": model_id,
        "dataset_id": dataset_id,
        "pipeline": [
            {"prune_channels": {"criterion": "spline", "ratio": 0.5, "probes": 128}},
            {"finetune": {"epochs": 3, "lr": 0.01}},
        ],
        "export": {"formats": ["onnx", "torchscript"]},
        "acceptance": {"max_accuracy_drop": 50.0},
    }
    created = client.post("/v1/jobs", json=spec)
    assert created.status_code == 202, created.text
    job = wait_job(client, created.json()["id"], finished, 900, "a terminal status")
    assert job["status"] == "succeeded", job
    names = {artifact["name"] for artifact in job["artifacts"]}
    assert {"model.onnx", "model.torchscript.pt", "report.json", "report.html"} <= names, names
    onnx_bytes = client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx").content
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x_val})[0]
    measured = 100.0 * float((logits.argmax(1) == y_val).mean())
    stated = report["accuracy"]["final"]
    assert abs(measured - stated) < 1e-6, f"the report states {stated}% but the ONNX model scores {measured}%"
    assert job["result"]["accuracy"]["final"] == stated
    say(
        f"job {job['id']} succeeded: accuracy dense {report['accuracy']['dense']:.2f}% → final {stated:.2f}% "
        f"(ONNX model measured {measured:.2f}%), parameters {report['parameters']['before']} → "
        f"{report['parameters']['after']}"
    )


def check_a_killed_worker(stack: Stack, client: httpx.Client, model_id: str, dataset_id: str) -> None:
    """docker kill the worker container running a job: the other replica resumes it from S3."""
    epochs = 40
    spec = {
        "model_id": model_id,
        "dataset_id": dataset_id,
        "pipeline": [{"finetune": {"epochs": epochs, "lr": 0.01}}],
        "training": {"batch_size": 1},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_accuracy_drop": 100.0},
    }
    created = client.post("/v1/jobs", json=spec)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    before = wait_job(client, job_id, lambda j: j["status"] == "running" and epoch(j) >= 2, 900, "epoch 2")
    started = f"job {job_id} attempt 1 started"
    holders = [c for c in stack.containers("worker-cpu") if started in stack.logs(c)]
    assert len(holders) == 1, f"{len(holders)} worker containers say they run {job_id}"
    killed_at = time.monotonic()
    run([docker_cli(), "kill", holders[0]], quiet=True)
    say(f"docker kill {holders[0][:12]} at epoch {epoch(before)}/{epochs}")
    job = wait_job(client, job_id, finished, 1800, "a terminal status after the kill")
    TIMES["kill → resumed job succeeded"] = round(time.monotonic() - killed_at, 1)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2, job
    resumed = job["result"]["resumed_from"]
    assert resumed["attempt"] == 1 and epoch(before) <= resumed["epoch"] < epochs, resumed
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    trained = report["training_curves"][resumed["stage"]]["epoch"]
    assert trained == list(range(resumed["epoch"] + 1, epochs + 1)), trained
    survivors = [c for c in stack.containers("worker-cpu") if f"job {job_id} attempt 2 started" in stack.logs(c)]
    assert len(survivors) == 1 and survivors[0] != holders[0], survivors
    say(
        f"job {job_id} resumed at epoch {resumed['epoch']} on {survivors[0][:12]} and succeeded (attempt 2); "
        f"epochs {trained[0]}..{trained[-1]} ran after the resume"
    )


def check_the_edge_protocol(base: str) -> None:
    """The image runs Shears' protocol (service/edge.py): a 128 KiB request header gets 431, which plain
    uvicorn does not answer."""
    host, port = httpx.URL(base).host, httpx.URL(base).port
    with socket.create_connection((host, port), timeout=30) as sock:
        with contextlib.suppress(OSError):  # the server may close while the header is still arriving
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 131072 + b"\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def main() -> int:
    if os.geteuid() != 0:
        say("run as root: it installs and starts dockerd and builds images")
        return 2
    work = Path(tempfile.mkdtemp(prefix="shears-deploy-check-"))
    dockerd = None
    stack: Stack | None = None
    try:
        dockerd = ensure_dockerd(work)
        build_images(extra_ca(work))
        first = free_ports(2)
        stack = Stack(range(first, first + 2), free_port())
        with timed("compose up (2 API replicas, 2 CPU workers, Redis, PostgreSQL, S3) until healthy"):
            stack("up", "-d", "--no-build", "--scale", "api=2", "--scale", "worker-cpu=2", "api", "worker-cpu")
            stack.wait_healthy("api", 600)
            for worker in stack.containers("worker-cpu"):
                stack.health(worker)  # still running
            bases = stack.api_bases()
            assert len(bases) == 2, bases
            for base in bases:
                wait_until(lambda b=base: httpx.get(f"{b}/readyz", timeout=5).is_success, 120, f"{base}/readyz")
        say(f"API replicas at {bases}")
        for base in bases:
            check_the_edge_protocol(base)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        first_api = httpx.Client(base_url=bases[0], headers=headers, timeout=60, follow_redirects=True)
        second_api = httpx.Client(base_url=bases[1], headers=headers, timeout=60, follow_redirects=True)
        with first_api, second_api:
            data, x_val, y_val = dataset_npz()
            model_id = upload(first_api, "models", "mlp.onnx", digits_mlp_onnx(hidden=32))
            dataset_id = upload(first_api, "datasets", "digits.npz", data)
            with timed("job through HTTP (upload → job → artifacts → accuracy)"):
                check_a_job(first_api, model_id, dataset_id, x_val, y_val)
            # the other replica serves the same uploads and jobs: replicas share only PostgreSQL, Redis, S3
            check_a_killed_worker(stack, second_api, model_id, dataset_id)
        say("PASSED")
        return 0
    except Exception:
        if stack is not None:
            with contextlib.suppress(Exception):
                for service in ("api", "worker-cpu", "minio-init"):
                    for container in stack.containers(service):
                        print(f"--- logs of {service} {container[:12]} ---\n{stack.logs(container)[-3000:]}")
        raise
    finally:
        if stack is not None:
            with timed("compose down"), contextlib.suppress(Exception):
                stack("down", "-v", "--remove-orphans", "--timeout", "10")
        stop_dockerd(dockerd)
        shutil.rmtree(work, ignore_errors=True)
        say("times (s): " + json.dumps(TIMES))


if __name__ == "__main__":
    sys.exit(main())
