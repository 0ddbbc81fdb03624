"""Celery tasks: thin adapters that take ids and call the engine or the domain."""

from __future__ import annotations

import hashlib
import io

from service.core.queue import PING_TASK
from service.core.storage import open_store
from worker.celery_app import app, settings


@app.task(name=PING_TASK)
def ping(nonce: str) -> dict:
    """Round trip through broker, worker and artifact store: writes ``health/<nonce>``."""
    payload = f"pong {nonce}".encode()
    open_store(settings).put_stream(f"health/{nonce}", io.BytesIO(payload))
    return {"nonce": nonce, "sha256": hashlib.sha256(payload).hexdigest()}
