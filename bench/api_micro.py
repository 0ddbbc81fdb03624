"""CPU cost of one GET /v1/jobs/{id} and its parts, in-process and sequential (no
concurrency, so the numbers are CPU time, not queueing): the whole ASGI request through
httpx's ASGITransport, and then its pieces — the ORM read, JobOut validation + dump,
JSON encoding — with cProfile of the request path (run in the calling thread by patching
the threadpool hop, so that cProfile sees it).

    .venv/bin/python bench/api_micro.py --db postgres --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import deployment, header, loadavg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--path", choices=["get", "create"], default="get", help="what --profile profiles")
    args = parser.parse_args()
    header(f"api_micro db={args.db}")
    with deployment(database=args.db, api=False) as dep:
        from service.api.schemas import JobOut
        from service.core.models import JobRecord, ModelRecord, new_id
        from service.main import create_app

        app = create_app(dep.settings, reaper=False)
        from service.core.db import create_schema

        create_schema(app.state.engine)
        sessions = app.state.sessions
        with sessions.begin() as session:
            session.add(
                ModelRecord(
                    id="mdl_bench",
                    tenant="bench",
                    filename="m.onnx",
                    sha256="0" * 64,
                    size_bytes=1,
                    storage_key="k",
                    status="ready",
                )
            )
            job = JobRecord(
                id=new_id("job"),
                tenant="bench",
                model_id="mdl_bench",
                spec={"pipeline": [{"x": 1}] * 4},
                status="queued",
                progress={},
                artifacts=[],
            )
            session.add(job)
        job_id = job.id
        out: dict = {"db": args.db}

        def t(label: str, fn, n: int) -> None:
            start = time.process_time()
            for _ in range(n):
                fn()
            out[label] = round(1000 * (time.process_time() - start) / n, 4)

        def orm_read():
            with sessions() as session:
                session.get(JobRecord, job_id)

        with sessions() as session:
            record = session.get(JobRecord, job_id)
        t("orm_read_ms", orm_read, args.requests // 2)
        t("jobout_validate_dump_ms", lambda: JobOut.model_validate(record).model_dump(mode="json"), args.requests)
        body = JobOut.model_validate(record).model_dump(mode="json")
        t("json_dumps_ms", lambda: json.dumps(body).encode(), args.requests)

        async def requests(n: int, path: str = "get") -> float:
            transport = httpx.ASGITransport(app=app)
            body = {
                "model_id": "mdl_bench",
                "dataset": {"builtin": "digits"},
                "pipeline": [{"prune_channels": {"ratio": 0.5}}],
            }
            async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=dep.headers) as client:
                await client.get(f"/v1/jobs/{job_id}")
                await client.post("/v1/jobs", json=body)
                start = time.process_time()
                for _ in range(n):
                    if path == "get":
                        response = await client.get(f"/v1/jobs/{job_id}")
                    else:
                        response = await client.post("/v1/jobs", json=body)
                    assert response.status_code in (200, 202), response.text
                return 1000 * (time.process_time() - start) / n

        out["asgi_request_ms_incl_client"] = round(asyncio.run(requests(args.requests)), 4)
        out["asgi_create_ms_incl_client"] = round(asyncio.run(requests(max(1, args.requests // 4), "create")), 4)

        async def client_only(n: int) -> float:
            async def tiny(scope, receive, send):
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"{}"})

            transport = httpx.ASGITransport(app=tiny)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                start = time.process_time()
                for _ in range(n):
                    await client.get("/x")
                return 1000 * (time.process_time() - start) / n

        out["client_transport_only_ms"] = round(asyncio.run(client_only(args.requests)), 4)
        out["asgi_request_ms"] = round(out["asgi_request_ms_incl_client"] - out["client_transport_only_ms"], 4)
        out["load"] = loadavg()
        print(json.dumps(out, indent=1))
        if args.profile:
            import anyio.to_thread
            import starlette.concurrency

            async def inline(func, *a, **k):  # run threadpool work inline so cProfile sees it
                return func(*a, **k)

            async def inline_sync(func, *a, **k):
                return func(*a)

            starlette.concurrency.run_in_threadpool = inline
            anyio.to_thread.run_sync = inline_sync
            import fastapi.dependencies.utils
            import fastapi.routing

            fastapi.routing.run_in_threadpool = inline
            fastapi.dependencies.utils.run_in_threadpool = inline
            import service.api.deps
            import service.api.jobs

            service.api.jobs.run_in_threadpool = inline
            service.api.deps.run_in_threadpool = inline
            profiler = cProfile.Profile()
            profiler.enable()
            asyncio.run(requests(args.requests // 2, args.path))
            profiler.disable()
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(45)
            print(stream.getvalue()[:9000])


if __name__ == "__main__":
    main()
