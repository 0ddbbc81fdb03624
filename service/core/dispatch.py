"""Sending jobs to workers, and the reaper that makes sure none is lost.

A job is sent only after its row is committed. When the broker is down the row stays
``queued`` without ``dispatched_at``; the reaper (run by every API process) sends it later,
re-queues jobs whose worker died (lease expired) and fails those out of attempts. Sending a
job twice is harmless: only one worker wins the compare-and-set ``queued → running``.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from sqlalchemy import or_, select
from sqlalchemy.orm import sessionmaker

from service.core import jobs
from service.core.config import Settings
from service.core.models import JobRecord, utcnow
from service.core.queue import RUN_JOB_TASK, send


def dispatch_job(sessions: sessionmaker, celery: Celery, settings: Settings, job_id: str) -> bool:
    """Send ``job_id`` to the queue; True when the broker took it."""
    with sessions() as session:
        job = session.get(JobRecord, job_id)
        if job is None or job.status != "queued":
            return False
        time_limit = int(job.spec.get("time_limit_s", 6 * 3600))
    try:
        send(celery, RUN_JOB_TASK, job_id, queue=settings.task_queue,
             soft_time_limit=time_limit, time_limit=time_limit + 60)  # fmt: skip
    except Exception:  # noqa: BLE001 - broker down: the reaper tries again
        return False
    with sessions.begin() as session:
        session.get(JobRecord, job_id).dispatched_at = utcnow()
    return True


def reap(sessions: sessionmaker, celery: Celery, settings: Settings) -> dict[str, list[str]]:
    """One pass: re-queue lost jobs, fail exhausted ones, (re)send undelivered queued jobs."""
    requeued, failed = jobs.requeue_expired(sessions)
    stale = utcnow() - timedelta(seconds=settings.dispatch_retry_s)
    with sessions() as session:
        waiting = session.scalars(
            select(JobRecord.id).where(
                JobRecord.status == "queued",
                or_(JobRecord.dispatched_at.is_(None), JobRecord.dispatched_at < stale,
                    JobRecord.id.in_(requeued)),
            ).limit(500)
        ).all()  # fmt: skip
    sent = [job_id for job_id in waiting if dispatch_job(sessions, celery, settings, job_id)]
    return {"requeued": requeued, "failed": failed, "sent": sent}
