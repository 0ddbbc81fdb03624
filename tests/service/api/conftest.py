"""An app on embedded components (SQLite, file storage, kombu filesystem broker), two tenants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.deps import hash_key
from service.core.config import Settings
from service.main import create_app

KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-0123456789"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, api_keys={hash_key(k): t for t, k in KEYS.items()}, max_upload_bytes=64 * 1024)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, reaper=False), headers={"Authorization": f"Bearer {KEYS['alpha']}"}) as c:
        yield c


def as_tenant(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}
