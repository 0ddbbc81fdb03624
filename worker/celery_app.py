"""Celery worker entry point: ``celery -A worker.celery_app worker``."""

from __future__ import annotations

from service.core.config import get_settings
from service.core.queue import make_celery

settings = get_settings()
app = make_celery(settings)
app.conf.include = ["worker.tasks"]
