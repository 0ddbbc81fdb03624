"""Schemathesis fuzzes every operation of the generated OpenAPI document with its full check
set: no 5xx, every status, media type, header and body as documented, invalid data refused,
valid data accepted, unsupported methods answered 405 with `Allow`, authentication enforced."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from service.api.deps import hash_key
from service.core.config import Settings
from service.core.db import create_schema
from service.core.workers import beat
from service.main import create_app

KEY = "fuzz-key-0123456789"
_DATA = Path(tempfile.mkdtemp(prefix="shears-fuzz-"))
_SETTINGS = Settings(
    data_dir=_DATA,
    api_keys={hash_key(KEY): "fuzz"},
    max_upload_bytes=1 << 20,
    worker_stale_s=1e9,
    rate_limit_per_s=1e6,
    rate_limit_burst=1_000_000,
)
app = create_app(_SETTINGS, reaper=False)
create_schema(app.state.engine)
beat(app.state.engine, "fuzz-worker", 1)  # one heartbeat that never goes stale: /readyz is 200, as with a worker
# A schema-valid request can still be refused for what no schema can express: the bytes of an
# uploaded file (422 unsupported-format), an id that does not exist (422 model-not-found), an
# opaque cursor this API never issued (400 invalid-cursor), a job that has not finished (409),
# a dataset reference while the operator allows none (403 references-disabled).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422"]}
        },
        "auth": {"openapi": {"bearer": {"bearer": KEY}}},
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_passes_all_of_schemathesis_checks(case) -> None:
    case.call_and_validate()  # no `checks=`: all of them; the key comes from the config's auth
