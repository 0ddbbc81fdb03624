"""Request dependencies: settings, database session, artifact store, and the caller's tenant."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.api.errors import Problem
from service.core.config import Settings
from service.core.storage import ArtifactStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def hash_key(key: str) -> str:
    """How API keys are stored: the sha256 hex digest (keys are long random tokens)."""
    return hashlib.sha256(key.encode()).hexdigest()


def get_tenant(request: Request) -> str:
    """The tenant of the bearer key; 401 with ``WWW-Authenticate`` otherwise."""
    settings: Settings = request.app.state.settings
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        problem = Problem(401, "unauthenticated",
                          "Send `Authorization: Bearer <api key>`; ask the operator for a key.")  # fmt: skip
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
