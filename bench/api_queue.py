"""Queue overhead and scale-out, through the real service: uvicorn + private redis-server +
PostgreSQL (fresh database) or SQLite + ``celery worker`` processes (-c 1 each, started
like the compose worker).

Per job it reports, from the job row's own timestamps and the engine's
``result.stage_seconds``:

- ``queue_s``   = started_at − created_at (POST accepted → a worker claimed it: `running`);
- ``wall_s``    = finished_at − created_at;
- ``engine_s``  = Σ stage_seconds (load, evaluate_dense, the spec's stages, export);
- ``overhead_s``= wall_s − engine_s: queueing, claiming, input download, lazy imports,
  report writing, artifact upload and the final row update.

Modes:
    overhead: one worker; the first job after the worker started (cold imports), then
              ``--warm`` more jobs one after another.
    scale:    ``--jobs`` equal jobs posted at once, with 1 and then 2 workers; total time
              (first created → last finished) and the ratio.

    .venv/bin/python bench/api_queue.py --mode overhead --warm 3
    .venv/bin/python bench/api_queue.py --mode scale --jobs 4 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import deployment, header, loadavg, tiny_onnx_model, write_json  # noqa: E402

SPEC = {
    "dataset": {"builtin": "digits"},
    "pipeline": [{"prune_channels": {"criterion": "l1", "ratio": 0.5}}, {"finetune": {"epochs": 3}}],
    "export": {"formats": ["onnx"]},
}


def _ts(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp()


def submit(client: httpx.Client, model_id: str, spec: dict) -> str:
    response = client.post("/v1/jobs", json={**spec, "model_id": model_id})
    response.raise_for_status()
    return response.json()["id"]


def wait_done(client: httpx.Client, job_ids: list[str], timeout: float = 600) -> dict[str, dict]:
    done: dict[str, dict] = {}
    first_running: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(job_ids) and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id in done:
                continue
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] != "queued" and job_id not in first_running:
                first_running[job_id] = time.time()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                done[job_id] = job
        time.sleep(0.02)
    return done


def describe(job: dict) -> dict:
    created, started, finished = _ts(job["created_at"]), _ts(job["started_at"]), _ts(job["finished_at"])
    stages = (job.get("result") or {}).get("stage_seconds") or {}
    engine = sum(stages.values())
    wall = finished - created
    return {
        "id": job["id"],
        "status": job["status"],
        "queue_s": round(started - created, 3),
        "wall_s": round(wall, 2),
        "engine_s": round(engine, 2),
        "overhead_s": round(wall - engine, 2),
        "stage_seconds": stages,
        "error": job.get("error"),
    }


def overhead(args) -> dict:
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    out: dict = {
        "mode": "overhead",
        "db": args.db,
        "threads": args.threads or "default",
        "warm_imports": args.warm_imports,
        "jobs": [],
    }
    with deployment(
        database=args.db,
        workers=1,
        worker_env=env,
        uvicorn_args=("--no-access-log",),
        settings_update={"worker_warm_imports": args.warm_imports == "on"},
    ) as dep:
        time.sleep(args.settle)
        with (
            tempfile.TemporaryDirectory() as tmp,
            httpx.Client(base_url=dep.base, headers=dep.headers, timeout=30) as client,
        ):
            onnx = tiny_onnx_model(Path(tmp) / "m.onnx")
            model_id = client.post("/v1/models", files={"file": ("m.onnx", onnx.read_bytes())}).json()["id"]
            time.sleep(2)  # its inspection task runs first on the worker
            for index in range(1 + args.warm):
                job_id = submit(client, model_id, SPEC)
                job = wait_done(client, [job_id])[job_id]
                row = {"kind": "first" if index == 0 else "warm", **describe(job), "load": loadavg()}
                out["jobs"].append(row)
                print(row, flush=True)
    return out


def scale(args) -> dict:
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    out: dict = {"mode": "scale", "db": args.db, "threads_per_worker": args.threads or "default", "runs": []}
    for workers in args.workers:
        with deployment(database=args.db, workers=workers, worker_env=env, uvicorn_args=("--no-access-log",)) as dep:
            time.sleep(args.settle)
            with (
                tempfile.TemporaryDirectory() as tmp,
                httpx.Client(base_url=dep.base, headers=dep.headers, timeout=30) as client,
            ):
                onnx = tiny_onnx_model(Path(tmp) / "m.onnx")
                model_id = client.post("/v1/models", files={"file": ("m.onnx", onnx.read_bytes())}).json()["id"]
                time.sleep(2)
                # warm every worker process (imports) with one job each, so the batch compares steady states
                wait_done(client, [submit(client, model_id, SPEC) for _ in range(workers)])
                load_before = loadavg()
                ids = [submit(client, model_id, SPEC) for _ in range(args.jobs)]
                jobs = wait_done(client, ids)
                rows = [describe(jobs[i]) for i in ids]
                created = min(_ts(jobs[i]["created_at"]) for i in ids)
                finished = max(_ts(jobs[i]["finished_at"]) for i in ids)
                starts = sorted(_ts(jobs[i]["started_at"]) for i in ids)
                run = {
                    "workers": workers,
                    "jobs": args.jobs,
                    "total_s": round(finished - created, 2),
                    "mean_job_wall_in_worker_s": round(sum(r["wall_s"] - r["queue_s"] for r in rows) / len(rows), 2),
                    "mean_engine_s": round(sum(r["engine_s"] for r in rows) / len(rows), 2),
                    "first_two_started_apart_s": round(starts[1] - starts[0], 2),
                    "load_before": load_before,
                    "load_after": loadavg(),
                    "job_rows": rows,
                }
                out["runs"].append(run)
                print({k: v for k, v in run.items() if k != "job_rows"}, flush=True)
    if len(out["runs"]) >= 2:
        out["speedup_1_to_2"] = round(out["runs"][0]["total_s"] / out["runs"][1]["total_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["overhead", "scale"], default="overhead")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each worker (0: default)")
    parser.add_argument(
        "--warm-imports",
        choices=["on", "off"],
        default="on",
        help="SHEARS_WORKER_WARM_IMPORTS of the worker (overhead mode)",
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between worker ready and first job")
    parser.add_argument("--json")
    args = parser.parse_args()
    header(f"api_queue mode={args.mode}")
    result = overhead(args) if args.mode == "overhead" else scale(args)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
