"""Celery tasks: thin adapters that take an id and call the domain or the engine."""

from __future__ import annotations

import hashlib
import io
from functools import cache

from service.core.db import create_schema, make_engine, make_session_factory
from service.core.queue import INSPECT_DATASET_TASK, INSPECT_MODEL_TASK, PING_TASK, RUN_JOB_TASK
from service.core.storage import open_store
from worker.celery_app import app, settings


@cache
def runtime():
    """Database sessions and the artifact store of this worker process (made after fork)."""
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
    return execute_job(job_id, settings, sessions, store)


@app.task(name=INSPECT_MODEL_TASK, acks_late=True, ignore_result=True)
def inspect_model(model_id: str) -> str:
    from worker.inspection import inspect_model_upload

    sessions, store = runtime()
    return inspect_model_upload(model_id, settings, sessions, store)


@app.task(name=INSPECT_DATASET_TASK, acks_late=True, ignore_result=True)
def inspect_dataset(dataset_id: str) -> str:
    from worker.inspection import inspect_dataset_upload

    sessions, store = runtime()
    return inspect_dataset_upload(dataset_id, settings, sessions, store)
