"""Liveness and readiness probes."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.core.db import check_database
from service.core.queue import check_broker
from service.core.workers import check_workers

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class DependencyCheck(BaseModel):
    ok: bool
    latency_ms: float
    detail: str | None = None


class Readiness(BaseModel):
    status: str
    checks: dict[str, DependencyCheck]


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive (no dependency is touched)."""
    return Health(status="ok")


def _timed(check) -> DependencyCheck:
    start = time.perf_counter()
    try:
        check()
    except Exception as error:  # noqa: BLE001 - any failure means "not ready"; say which
        return DependencyCheck(
            ok=False,
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
            detail=f"{type(error).__name__}: {error}"[:300],
        )
    return DependencyCheck(ok=True, latency_ms=round((time.perf_counter() - start) * 1000, 2))


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is unavailable, or no worker is alive."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Database, broker and artifact storage each answer, and a worker sent a heartbeat
    within ``worker_stale_s``; 503 names the check that failed."""
    state = request.app.state
    stale_s = state.settings.worker_stale_s
    checks = {
        "database": await run_in_threadpool(_timed, lambda: check_database(state.engine)),
        "broker": await run_in_threadpool(_timed, lambda: check_broker(state.celery)),
        "storage": await run_in_threadpool(_timed, state.store.check),
        "worker": await run_in_threadpool(_timed, lambda: check_workers(state.engine, stale_s)),
    }
    ready = all(c.ok for c in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
