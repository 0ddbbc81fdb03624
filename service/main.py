"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool

from service import __version__ as API_VERSION
from service.api import health, jobs, metrics
from service.api.contract import authenticated_operations, complete_contract
from service.api.deps import get_tenant
from service.api.errors import install_error_handlers
from service.api.schemas import DatasetReference
from service.api.uploads import remove_orphan_uploads
from service.api.uploads_router import datasets_router, models_router
from service.core.config import Settings, get_settings
from service.core.db import create_schema, make_engine, make_session_factory
from service.core.dispatch import reap
from service.core.queue import make_celery
from service.core.spec import JobSpec
from service.core.storage import open_store
from service.edge import EdgeLimits

REF_TEMPLATE = "#/components/schemas/{model}"

log = logging.getLogger("shears.api")


async def _reaper_loop(app: FastAPI) -> None:
    """Re-dispatch undelivered jobs and recover jobs of lost workers, forever."""
    state = app.state
    while True:
        try:
            await run_in_threadpool(reap, state.sessions, state.celery, state.settings, state.store)
        except Exception:  # noqa: BLE001 - a database or broker blip: try again next round
            log.exception("reaper pass failed")
        await asyncio.sleep(state.settings.reaper_interval_s)  # the period of a periodic job


def create_app(settings: Settings | None = None, *, reaper: bool = True) -> FastAPI:
    """Build the app; connections are opened lazily, so building it touches no server."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        removed = remove_orphan_uploads(settings.data_dir / "tmp")
        if removed:
            log.warning("removed %d temporary upload files of dead API processes", len(removed))
        create_schema(app.state.engine)
        task = asyncio.create_task(_reaper_loop(app)) if reaper else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        app.state.engine.dispose()

    app = FastAPI(
        title="Shears",
        version=API_VERSION,
        summary="Prune neural networks: early-bird tickets, spline channel pruning, ProbMask.",
        description="Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457 "
        "problem+json bodies with a stable `type` and a `detail` that says how to fix the request.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings)
    app.state.sessions = make_session_factory(app.state.engine)
    app.state.store = open_store(settings)
    app.state.celery = make_celery(settings)
    install_error_handlers(app)
    metrics.install_metrics(app)
    app.add_middleware(EdgeLimits, settings=settings)  # outermost: limits apply before any work
    routers = (health.router, metrics.router, models_router, datasets_router, jobs.router)
    for router in routers:
        app.include_router(router)
    authenticated = authenticated_operations([route for router in routers for route in router.routes], get_tenant)
    app.openapi = lambda: _openapi_with_job_spec(app, authenticated)
    return app


def _openapi_with_job_spec(app: FastAPI, authenticated: set[tuple[str, str]]) -> dict:
    """The generated spec, plus the JobSpec and DatasetReference schemas that POST /v1/jobs
    and POST /v1/datasets reference (their bodies are parsed by hand to accept JSON and
    multipart alike)."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(JobSpec, "validation"), (DatasetReference, "validation")], ref_template=REF_TEMPLATE
        )
        spec.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
        app.openapi_schema = complete_contract(spec, authenticated)
    return app.openapi_schema
