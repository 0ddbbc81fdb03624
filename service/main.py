"""The FastAPI application factory."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import health
from service.api.errors import install_error_handlers
from service.core.config import Settings, get_settings
from service.core.db import create_schema, make_engine, make_session_factory
from service.core.queue import make_celery
from service.core.storage import open_store

API_VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; connections are opened lazily, so building it touches no server."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        create_schema(app.state.engine)
        yield
        app.state.engine.dispose()

    app = FastAPI(
        title="Shears",
        version=API_VERSION,
        summary="Prune neural networks: early-bird tickets, spline channel pruning, ProbMask.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings)
    app.state.sessions = make_session_factory(app.state.engine)
    app.state.store = open_store(settings)
    app.state.celery = make_celery(settings)
    install_error_handlers(app)
    app.include_router(health.router)
    return app
