"""The committed contract equals what the app generates."""

from __future__ import annotations

from service.openapi import render_openapi
from tests.servers import REPO_ROOT


def test_committed_openapi_yaml_equals_the_generated_spec() -> None:
    committed = (REPO_ROOT / "openapi.yaml").read_text()
    assert committed == render_openapi(), (
        "openapi.yaml is stale: regenerate it with `.venv/bin/shears openapi > openapi.yaml`"
    )
