"""A task really travels: API-side Celery app → redis-server → celery worker → moto S3."""

from __future__ import annotations

import hashlib
import uuid

from service.core.config import Settings
from service.core.queue import PING_TASK, make_celery
from service.core.storage import open_store


def test_a_ping_task_goes_through_redis_and_a_worker_process_and_lands_in_s3(
    service_settings: Settings, celery_worker
) -> None:
    nonce = uuid.uuid4().hex
    sender = make_celery(service_settings)

    result = sender.send_task(PING_TASK, args=[nonce]).get(timeout=60)

    store = open_store(service_settings)
    stored = b"".join(store.iter_bytes(f"health/{nonce}"))
    assert stored == f"pong {nonce}".encode()
    assert result == {"nonce": nonce, "sha256": hashlib.sha256(stored).hexdigest()}
    assert celery_worker.alive()
