"""Real servers for the test suite: started on free loopback ports, stopped afterwards.

Each helper starts a real process (redis-server, moto's S3 server, a ``celery worker``,
uvicorn) and waits for it to *answer* — polling the server itself, never sleeping blindly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from service.core.children import die_with_parent

if TYPE_CHECKING:
    from service.core.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it is true; raise naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as error:  # noqa: BLE001 - a server that is still starting may raise anything
            last_error = error
        time.sleep(interval)
    raise TimeoutError(f"{what} did not become ready in {timeout:.0f}s (last error: {last_error})")


class Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=REPO_ROOT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def ensure_alive(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
        return True

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()


def ensure_binary(binary: str, apt_package: str) -> str:
    """The path of ``binary``, installing its Debian package when it is missing."""
    path = shutil.which(binary)
    if path:
        return path
    install = ["apt-get", "install", "-y", "-q", apt_package]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    path = shutil.which(binary)
    if not path:
        raise RuntimeError(f"{binary} is missing even after apt-get install {apt_package}")
    return path


def start_redis(log_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> tuple[Process, str]:
    """A redis-server without persistence (``port``: restart one on the same address;
    ``host``: a local address to listen on instead of loopback)."""
    import redis

    port = port or free_port()
    binary = ensure_binary("redis-server", "redis-server")
    proc = Process(
        "redis-server",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(log_dir),
            "--protected-mode",
            "yes" if host == "127.0.0.1" else "no",
        ],
        log_dir,
    )
    url = f"redis://{host}:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    wait_until(lambda: proc.ensure_alive() and client.ping(), 20, "redis-server")
    return proc, url


def start_moto(log_dir: Path, host: str = "127.0.0.1") -> tuple[Process, str]:
    port = free_port()
    proc = Process("moto-s3", [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], log_dir)
    endpoint = f"http://{host}:{port}"
    wait_until(
        lambda: proc.ensure_alive() and httpx.get(endpoint, timeout=1).status_code < 500,
        60,
        "moto S3 server",
    )
    return proc, endpoint


POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def ensure_postgres() -> None:
    """Make PostgreSQL answer on loopback: start the local cluster when it is down, install
    Debian's ``postgresql`` first when it is missing. Raises when that fails: the tests that
    need PostgreSQL must fail, never skip, on a machine where it cannot run."""
    import psycopg

    def answers() -> bool:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2):
            return True

    with contextlib.suppress(Exception):
        if answers():
            return
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        ensure_binary("pg_ctlcluster", "postgresql")
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        raise RuntimeError("PostgreSQL is installed but has no cluster under /etc/postgresql")
    for version in versions:
        started = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            text=True,
        )
        if started.returncode not in (0, 2):  # 2: already running
            raise RuntimeError(f"pg_ctlcluster {version} main start failed: {started.stderr.strip()}")
    wait_until(answers, 60, f"PostgreSQL at {POSTGRES_ADMIN_URL} (trust authentication for user postgres)")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database for this test session; dropped afterwards."""
    import psycopg

    name = f"shears_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)


def start_celery_worker(
    log_dir: Path,
    settings: Settings,
    name: str = "celery-worker",
    concurrency: int = 1,
    wait: bool = True,
    prefix: tuple[str, ...] = (),
) -> Process:
    """A real ``celery worker`` process; returns once it answers a remote-control ping
    (``wait=False``: at once; call ``wait_for_worker`` later, to start several in parallel;
    ``prefix``: a command that runs it elsewhere, e.g. ``ip netns exec <host>``)."""
    hostname = f"{name}-{uuid.uuid4().hex[:6]}@%h"
    proc = Process(
        name,
        [
            *prefix,
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            str(concurrency),
            "--hostname",
            hostname,
            "--without-gossip",
            "--without-mingle",
        ],
        log_dir,
        {"OMP_NUM_THREADS": "1", **settings.as_env()},
    )
    proc.hostname = hostname.split("@")[0]
    if wait:
        wait_for_worker(proc, settings)
    return proc


def wait_for_worker(proc: Process, settings: Settings) -> Process:
    from service.core.queue import make_celery

    name = proc.name
    control = make_celery(settings)
    wanted = proc.hostname

    def answers() -> bool:
        replies = control.control.ping(timeout=0.5) or []
        return any(wanted in next(iter(reply)) for reply in replies)

    def warm() -> bool:  # a task started during the warm-up waits for it, inside its time limit
        return not settings.worker_warm_imports or "engine imports warm" in proc.log_path.read_text(errors="replace")

    try:
        wait_until(lambda: proc.ensure_alive() and answers(), 90, name)
        wait_until(lambda: proc.ensure_alive() and warm(), 180, f"{name} importing the engine")
    except Exception:
        proc.stop()
        raise
    return proc


def api_argv(port: int, *extra: str) -> list[str]:
    """uvicorn serving the app factory on loopback ``port``, with ``extra`` options."""
    argv = [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory"]
    return [*argv, "--host", "127.0.0.1", "--port", str(port), *extra]


def start_api(log_dir: Path, settings: Settings, name: str = "api") -> tuple[Process, str]:
    """The API as production runs it (uvicorn with the app factory); returns once /healthz answers."""
    port = free_port()
    proc = Process(name, api_argv(port, "--http", "service.edge:GuardedHttpToolsProtocol"), log_dir, settings.as_env())
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.ensure_alive() and httpx.get(f"{base}/healthz", timeout=2).is_success, 180, name)
    except Exception:
        proc.stop()
        raise
    return proc, base
