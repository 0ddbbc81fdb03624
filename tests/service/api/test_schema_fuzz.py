"""Schemathesis fuzzes every operation of the generated OpenAPI document: no 5xx, and every
documented response conforms to its schema."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from service.api.deps import hash_key
from service.core.config import Settings
from service.main import create_app

KEY = "fuzz-key-0123456789"
_DATA = Path(tempfile.mkdtemp(prefix="shears-fuzz-"))
app = create_app(Settings(data_dir=_DATA, api_keys={hash_key(KEY): "fuzz"}, max_upload_bytes=1 << 20), reaper=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx_or_breaks_its_schema(case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[not_a_server_error, response_schema_conformance],
    )
