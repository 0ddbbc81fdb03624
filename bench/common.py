"""Shared helpers of the performance benchmarks (bench/api_*.py, bench/engine_*.py,
bench/pruned_latency.py): machine/load description, percentiles, and a throw-away
deployment of the service built from the test suite's real-server helpers
(tests/servers.py): a private redis-server, moto's S3 server, a fresh PostgreSQL database
or SQLite, uvicorn started like the compose API, and ``celery worker`` processes.

Benchmarks print numbers; they are not tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

API_KEY = "bench-key-0123456789abcdef"


def loadavg() -> str:
    """`uptime`'s three load averages, e.g. '2.10 1.95 1.40'."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> dict:
    import multiprocessing

    info = {"cpus": multiprocessing.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["mem_gib"] = round(int(mem) / 2**20, 1)
    return info


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# machine: {json.dumps(machine())}")
    print(f"# load average at start: {loadavg()}", flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
    return ordered[index]


def summarize_ms(values_s: list[float]) -> dict:
    ms = [v * 1000.0 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def timer(fn, *args, repeats: int = 10, warmup: int = 2, **kwargs) -> list[float]:
    """Wall seconds of ``fn(*args, **kwargs)`` per call, after ``warmup`` calls."""
    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- deployment


@dataclass
class Deployment:
    """Servers of one benchmark run; ``stop()`` stops all of them."""

    log_dir: Path
    settings: object = None
    base: str = ""
    api: object = None
    procs: list = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {API_KEY}"}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
        self._stack.close()


@contextlib.contextmanager
def deployment(
    database: str = "sqlite",
    storage: str = "file",
    api: bool = True,
    workers: int = 0,
    uvicorn_args: tuple[str, ...] = (),
    settings_update: dict | None = None,
    worker_env: dict | None = None,
) -> Iterator[Deployment]:
    """A private deployment: redis-server broker, ``database`` ('sqlite' | 'postgres'),
    ``storage`` ('file' | 's3', moto), uvicorn started like the compose API (plus
    ``uvicorn_args``), and ``workers`` celery worker processes (-c 1 each)."""
    import httpx

    from service.api.deps import hash_key
    from service.core.config import Settings
    from tests import servers

    tmp = Path(tempfile.mkdtemp(prefix="shears-bench-"))
    dep = Deployment(log_dir=tmp)
    try:
        redis_proc, redis_url = servers.start_redis(tmp)
        dep.procs.append(redis_proc)
        update: dict = {
            "data_dir": tmp / "data",
            "broker_url": redis_url,
            "api_keys": {hash_key(API_KEY): "bench"},
            "progress_interval_s": 1.0,
            # one key drives the whole load: the per-key rate limit would measure itself
            "rate_limit_per_s": 1e6,
            "rate_limit_burst": 1_000_000,
        }
        if database == "postgres":
            servers.ensure_postgres()
            update["database_url"] = dep._stack.enter_context(servers.postgres_database())
        if storage == "s3":
            moto_proc, endpoint = servers.start_moto(tmp)
            dep.procs.append(moto_proc)
            servers.create_bucket(endpoint, "bench")
            update.update(
                storage_uri="s3://bench/artifacts",
                s3_endpoint_url=endpoint,
                s3_access_key_id="test",
                s3_secret_access_key="test",
            )
        update.update(settings_update or {})
        settings = Settings(**update)
        dep.settings = settings
        for index in range(workers):
            proc = servers.Process(
                f"worker{index}",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker.celery_app",
                    "worker",
                    "--concurrency",
                    "1",
                    "--queues",
                    settings.task_queue,
                    "--loglevel",
                    "INFO",
                    "--without-gossip",
                    "--without-mingle",
                    "--hostname",
                    f"bench{index}@%h",
                ],
                tmp,
                {**settings.as_env(), **(worker_env or {})},
            )
            proc.hostname = f"bench{index}"
            dep.procs.append(proc)
        if api:
            port = servers.free_port()
            dep.api = servers.Process("api", servers.api_argv(port, *uvicorn_args), tmp, settings.as_env())
            dep.procs.append(dep.api)
            dep.base = f"http://127.0.0.1:{port}"
            servers.wait_until(
                # the API's own probe: /readyz also needs a worker heartbeat, and the workers are
                # awaited below with their own deadlines (warm-up imports take minutes under load)
                lambda: dep.api.ensure_alive() and httpx.get(f"{dep.base}/healthz", timeout=5).is_success,
                90,
                "uvicorn api",
            )
        for proc in dep.procs:
            if getattr(proc, "hostname", None) and proc.name.startswith("worker"):
                servers.wait_for_worker(proc, settings)
        yield dep
    finally:
        dep.stop()
        if os.environ.get("SHEARS_BENCH_KEEP_LOGS"):
            print(f"# logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def tiny_onnx_model(path: Path, channels: int = 8) -> Path:
    """A tiny CNN for 8×8 single-channel inputs (scikit-learn digits), exported to ONNX."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1),
        torch.nn.BatchNorm2d(channels),
        torch.nn.ReLU(),
        torch.nn.Conv2d(channels, 2 * channels, 3, padding=1),
        torch.nn.BatchNorm2d(2 * channels),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * channels, 10),
    ).eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}},
    )
    return path


def write_json(path: str | None, payload: dict) -> None:
    text = json.dumps(payload, indent=1, default=str)
    if path:
        Path(path).write_text(text)
    print(text)


def stage_context(data, spec, teacher, stage_id: str = "0-stage", next_params=None, device: str = "cpu"):
    """A job's StageContext with no hooks (on the CPU unless ``device`` says otherwise): how the
    benchmarks run the stage runners (worker.pruning.stages) exactly as a job's stages, outside a job."""
    import torch

    from worker.pruning.stages import StageContext
    from worker.pruning.training import TrainHooks

    return StageContext(
        data=data,
        spec=spec,
        device=torch.device(device),
        hooks=TrainHooks(),
        teacher=teacher,
        stage_id=stage_id,
        next_params=next_params,
    )
