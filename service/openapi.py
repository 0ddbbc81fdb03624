"""The committed contract: ``openapi.yaml`` is exactly what the app generates."""

from __future__ import annotations

import yaml

from service.core.config import Settings


def render_openapi() -> str:
    """The app's OpenAPI document as deterministic YAML."""
    from service.main import create_app

    spec = create_app(Settings()).openapi()
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)
