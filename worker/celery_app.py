"""Celery worker entry point: ``celery -A worker.celery_app worker``."""

from __future__ import annotations

import resource

from celery.signals import worker_process_init

from service.core.config import get_settings
from service.core.queue import make_celery

settings = get_settings()
app = make_celery(settings)
app.conf.include = ["worker.tasks"]


@worker_process_init.connect
def _limit_memory(**_) -> None:
    """Cap each pool process's address space, so a job that needs too much memory fails with
    MemoryError (reported as `out-of-memory`) instead of the kernel killing the worker."""
    if settings.worker_memory_limit_mb:
        limit = settings.worker_memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
