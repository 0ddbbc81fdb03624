"""Celery tasks: thin adapters that take an id and call the domain or the engine."""

from __future__ import annotations

import hashlib
import io
import logging
from functools import cache

from service.core.db import create_schema, make_engine, make_session_factory
from service.core.queue import INSPECT_DATASET_TASK, INSPECT_MODEL_TASK, PING_TASK, RUN_JOB_TASK
from service.core.storage import open_store
from worker.celery_app import app, settings, wait_for_engine_imports


def runtime():
    """Database sessions and the artifact store of this worker process (made after fork),
    once the engine's warm-up imports are done."""
    wait_for_engine_imports()
    return _runtime()


@cache
def _runtime():
    engine = make_engine(settings)
    create_schema(engine)
    return make_session_factory(engine), open_store(settings)


@app.task(name=PING_TASK)
def ping(nonce: str) -> dict:
    """Round trip through broker, worker and artifact store: writes ``health/<nonce>``."""
    payload = f"pong {nonce}".encode()
    open_store(settings).put_stream(f"health/{nonce}", io.BytesIO(payload))
    return {"nonce": nonce, "sha256": hashlib.sha256(payload).hexdigest()}


@app.task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> str:
    from worker.execution import execute_job

    sessions, store = runtime()
    try:
        return execute_job(job_id, settings, sessions, store)
    finally:
        _refill_window(sessions)


def _refill_window(sessions) -> None:
    """A worker slot is free: send the next job in fair order now, not at the reaper's next pass."""
    from service.core.dispatch import fill_window

    try:
        fill_window(sessions, app, settings)
    except Exception:  # noqa: BLE001 - the reaper sends it instead
        logging.getLogger("shears.worker").warning("could not send the next job", exc_info=True)


# An inspection is bounded: past the soft limit the upload is marked `invalid`/`inspection-timeout`
# (worker.inspection); the hard limit, 30 s later, replaces a pool process stuck in native code.
INSPECTION_LIMITS = {"soft_time_limit": settings.inspect_time_limit_s, "time_limit": settings.inspect_time_limit_s + 30}


@app.task(name=INSPECT_MODEL_TASK, acks_late=True, ignore_result=True, **INSPECTION_LIMITS)
def inspect_model(model_id: str) -> str:
    from worker.inspection import inspect_model_upload

    sessions, store = _runtime()  # waits for the warm-up under the time limit, inside the inspection
    return inspect_model_upload(model_id, settings, sessions, store, ready=wait_for_engine_imports)


@app.task(name=INSPECT_DATASET_TASK, acks_late=True, ignore_result=True, **INSPECTION_LIMITS)
def inspect_dataset(dataset_id: str) -> str:
    from worker.inspection import inspect_dataset_upload

    sessions, store = _runtime()
    return inspect_dataset_upload(dataset_id, settings, sessions, store, ready=wait_for_engine_imports)
