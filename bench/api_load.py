"""API under load: GET /v1/jobs/{id} polling and POST /v1/jobs creation against ONE uvicorn
process, with an asyncio httpx load generator on loopback (bounded in time).

Each phase runs ``--clients`` concurrent clients for ``--seconds``:

- closed loop (``--rate 0``): every client sends its next request as soon as the previous
  answered — the saturation throughput; latency then follows Little's law (clients / rate).
- paced (``--rate R``): every client sends R requests per second (open loop per client,
  like a CI job polling) — latency at a given offered load.

Usage (one database per run; PostgreSQL gets a fresh database as the tests make one):

    .venv/bin/python bench/api_load.py --db sqlite --clients 50 200 --seconds 15
    .venv/bin/python bench/api_load.py --db postgres --clients 50 200 --seconds 15 \
        --uvicorn-args="--no-access-log --http httptools --loop uvloop"

Prints one JSON object per phase and a summary; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import (
    API_KEY,
    cpu_seconds,
    deployment,
    header,
    loadavg,
    rss_kib,
    summarize_ms,
    tiny_onnx_model,
    write_json,
)  # noqa: E402

SPEC = {"dataset": {"builtin": "digits"}, "pipeline": [{"prune_channels": {"ratio": 0.5}}]}


async def _phase(base: str, headers: dict, clients: int, seconds: float, rate: float, make_request) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=timeout) as client:
        deadline = time.perf_counter() + seconds

        async def one_client(index: int) -> None:
            rng = random.Random(index)
            period = 1.0 / rate if rate > 0 else 0.0
            next_at = time.perf_counter() + rng.random() * period  # spread the first requests
            while True:
                if period:
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at += period
                if time.perf_counter() >= deadline:
                    return
                method, url, kwargs = make_request(rng)
                start = time.perf_counter()
                try:
                    response = await client.request(method, url, **kwargs)
                    code = str(response.status_code)
                    if response.status_code >= 400:
                        errors.append(f"{code} {response.text[:120]}")
                except Exception as error:  # noqa: BLE001 - every failure counts as an error
                    code = type(error).__name__
                    errors.append(code)
                latencies.append(time.perf_counter() - start)
                statuses[code] = statuses.get(code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        **summarize_ms(latencies),
        "statuses": statuses,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[0.0],
        help="requests/s per client for the polling phase (0 = closed loop)",
    )
    parser.add_argument("--create-rate", type=float, default=0.0, help="requests/s per client for creation")
    parser.add_argument("--jobs", type=int, default=200, help="jobs created up front for polling")
    parser.add_argument("--etag", action="store_true", help="pollers send If-None-Match (304 answers)")
    parser.add_argument("--uvicorn-args", default="", help="extra uvicorn flags, e.g. '--no-access-log'")
    parser.add_argument("--phases", nargs="+", default=["poll", "create"], choices=["poll", "create"])
    parser.add_argument("--base", help="load an already running API (key bench.common.API_KEY) instead")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    header(f"api_load db={args.db} uvicorn_args={args.uvicorn_args!r}")
    results: dict = {"db": args.db, "uvicorn_args": args.uvicorn_args, "phases": []}
    if args.base:
        context = contextlib.nullcontext(
            SimpleNamespace(base=args.base, api=SimpleNamespace(pid=0), headers={"Authorization": f"Bearer {API_KEY}"})
        )
    else:
        context = deployment(database=args.db, uvicorn_args=tuple(shlex.split(args.uvicorn_args)))
    with context as dep:
        print(f"# api pid {dep.api.pid} at {dep.base}", flush=True)
        headers = dep.headers
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = tiny_onnx_model(Path(tmp) / "model.onnx")
            with httpx.Client(base_url=dep.base, headers=headers, timeout=30) as client:
                response = client.post("/v1/models", files={"file": ("model.onnx", onnx_path.read_bytes())})
                response.raise_for_status()
                model_id = response.json()["id"]
                body = {**SPEC, "model_id": model_id}
                job_ids = []
                for _ in range(args.jobs):
                    response = client.post("/v1/jobs", json=body)
                    response.raise_for_status()
                    job_ids.append(response.json()["id"])
                etags = {job_id: client.get(f"/v1/jobs/{job_id}").headers["etag"] for job_id in job_ids[:1]}

        def poll(rng):
            job_id = rng.choice(job_ids)
            kwargs = {}
            if args.etag:
                etag = etags.get(job_id) or f'W/"{job_id}-1"'
                kwargs["headers"] = {"If-None-Match": etag}
            return "GET", f"/v1/jobs/{job_id}", kwargs

        def create(_rng):
            return "POST", "/v1/jobs", {"json": body}

        async def run_all():
            for phase in args.phases:
                rates = args.rate if phase == "poll" else [args.create_rate]
                for clients in args.clients:
                    for rate in rates:
                        rss_before = rss_kib(dep.api.pid)
                        cpu_before = cpu_seconds(dep.api.pid) if dep.api.pid else float("nan")
                        before = loadavg()
                        result = await _phase(
                            dep.base, headers, clients, args.seconds, rate, poll if phase == "poll" else create
                        )
                        cpu = cpu_seconds(dep.api.pid) - cpu_before if dep.api.pid else float("nan")
                        record = {
                            "phase": phase,
                            "clients": clients,
                            "rate_per_client": rate,
                            **result,
                            "api_cpu_ms_per_request": round(1000 * cpu / max(1, result["requests"]), 3),
                            "api_rss_mib": round(rss_kib(dep.api.pid) / 1024, 1),
                            "api_rss_before_mib": round(rss_before / 1024, 1),
                            "load_before": before,
                            "load_after": loadavg(),
                        }
                        results["phases"].append(record)
                        print(record, flush=True)
                        await asyncio.sleep(2)  # let the server drain

        asyncio.run(run_all())
    write_json(args.json, results)


if __name__ == "__main__":
    main()
