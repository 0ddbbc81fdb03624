"""Request dependencies: settings, database session, artifact store, and the caller's tenant."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api.errors import Problem
from service.core.config import Settings
from service.core.storage import ArtifactStore

# Dependencies are ``async def`` where they do no blocking I/O: FastAPI runs a plain ``def``
# dependency in the threadpool, and every such hop costs a thread hand-off under the GIL
# (bench/api_load.py: these hops, not the database, capped polling throughput).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    session = request.app.state.sessions()  # no I/O: it connects on first use, in the endpoint's thread
    try:
        yield session
    finally:
        if session.in_transaction():  # holds a connection: rolling back is I/O
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def hash_key(key: str) -> str:
    """How API keys are stored: the sha256 hex digest (keys are long random tokens)."""
    return hashlib.sha256(key.encode()).hexdigest()


async def get_tenant(request: Request) -> str:
    """The tenant of the bearer key; 401 with ``WWW-Authenticate`` otherwise."""
    settings: Settings = request.app.state.settings
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        problem = Problem(401, "unauthenticated", "Send `Authorization: Bearer <api key>`; ask the operator for a key.")
    else:
        digest = hash_key(key.strip())
        for known, tenant in settings.api_keys.items():
            if hmac.compare_digest(known, digest):
                return tenant
        problem = Problem(401, "invalid-api-key", "This API key is not known; check it or ask for a new one.")
    problem.headers["WWW-Authenticate"] = 'Bearer realm="shears"'
    raise problem


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
TenantDep = Annotated[str, Depends(get_tenant)]
