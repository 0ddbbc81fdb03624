"""Sending jobs to workers fairly, and the reaper that makes sure none is lost.

A job is sent only after its row is committed. At most ``dispatch_window`` jobs are in the
broker at once (sent, not yet started); the others wait in the database. Whenever the window
has room, the next job sent is the oldest of the tenant with the fewest active jobs (running,
or sent and not started), so a tenant with a backlog of a hundred jobs delays another tenant's
first job by at most the window, never by its backlog (fair share, as in Slurm's or
Kubernetes Kueue's per-tenant queues).

When the broker is down the rows stay ``queued`` and the reaper (run by every API process)
sends them later; it also re-queues jobs whose worker died (lease expired) and fails those out
of attempts, removing what their workers stored (checkpoints, partial artifacts): no worker is
left to do it. Sending a job twice is harmless: only one worker wins the compare-and-set
``queued → running``.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import timedelta

from celery import Celery
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import sessionmaker

from service.core import jobs
from service.core.artifacts import job_prefix
from service.core.config import Settings
from service.core.models import JobRecord, utcnow
from service.core.queue import RUN_JOB_TASK, send
from service.core.storage import ArtifactStore

log = logging.getLogger("shears.api")

TIME_LIMIT_GRACE_S = 60
_SENT = and_(JobRecord.status == "queued", JobRecord.dispatched_at.is_not(None))


def _send(sessions: sessionmaker, celery: Celery, settings: Settings, job_id: str) -> bool:
    """Send ``job_id`` to the queue; True when the broker took it."""
    with sessions() as session:
        job = session.get(JobRecord, job_id)
        if job is None or job.status != "queued":
            return False
        time_limit = int(job.spec.get("time_limit_s", 6 * 3600))
    try:
        # the worker enforces time_limit_s itself from the job's start (worker.execution.JobClock);
        # Celery's limits count from the delivery (warm-up included) and only back it up
        send(
            celery,
            RUN_JOB_TASK,
            job_id,
            queue=settings.task_queue,
            soft_time_limit=time_limit + TIME_LIMIT_GRACE_S,
            time_limit=time_limit + 2 * TIME_LIMIT_GRACE_S,
        )
    except Exception:  # noqa: BLE001 - broker down: the reaper tries again
        return False
    with sessions.begin() as session:
        session.get(JobRecord, job_id).dispatched_at = utcnow()
    return True


def fill_window(sessions: sessionmaker, celery: Celery, settings: Settings) -> list[str]:
    """Send waiting jobs, fairly across tenants, until ``dispatch_window`` are in the broker."""
    with sessions() as session:
        free = settings.dispatch_window - session.scalar(select(func.count()).select_from(JobRecord).where(_SENT))
        if free <= 0:
            return []
        waiting = session.execute(
            select(JobRecord.id, JobRecord.tenant)
            .where(JobRecord.status == "queued", JobRecord.dispatched_at.is_(None))
            .order_by(JobRecord.created_at, JobRecord.id)
            .limit(1000)
        ).all()
        if not waiting:
            return []
        active = dict(
            session.execute(
                select(JobRecord.tenant, func.count())
                .where(or_(JobRecord.status.in_(jobs.ACTIVE), _SENT))
                .group_by(JobRecord.tenant)
            ).all()
        )
    queues: dict[str, deque[str]] = {}
    for job_id, tenant in waiting:  # tenants in the order of their oldest waiting job
        queues.setdefault(tenant, deque()).append(job_id)
    order = {tenant: rank for rank, tenant in enumerate(queues)}
    sent: list[str] = []
    while free > 0 and queues:
        tenant = min(queues, key=lambda t: (active.get(t, 0), order[t]))
        job_id = queues[tenant].popleft()
        if not queues[tenant]:
            del queues[tenant]
        if not _send(sessions, celery, settings, job_id):
            with sessions() as session:
                if session.get(JobRecord, job_id).status == "queued":
                    break  # the broker is down: the reaper tries again
            continue  # cancelled meanwhile: the slot is still free
        sent.append(job_id)
        active[tenant] = active.get(tenant, 0) + 1
        free -= 1
    return sent


def dispatch_job(sessions: sessionmaker, celery: Celery, settings: Settings, job_id: str) -> bool:
    """Called when ``job_id`` was created: fill the window; True when this job was sent now
    (otherwise it waits for its fair turn, and the reaper sends it)."""
    return job_id in fill_window(sessions, celery, settings)


def reap(
    sessions: sessionmaker, celery: Celery, settings: Settings, store: ArtifactStore | None = None
) -> dict[str, list[str]]:
    """One pass: re-queue lost jobs (their checkpoints stay: the next attempt resumes from
    them), end exhausted ones and remove their objects from ``store``, re-send jobs sent long
    ago and not started (the broker may have lost them), then fill the window."""
    requeued, ended = jobs.requeue_expired(sessions)
    for job_id in ended if store is not None else ():
        try:
            store.delete_prefix(job_prefix(job_id))
        except Exception:  # noqa: BLE001 - storage down: stale objects only cost space
            log.warning("could not remove the stored objects of job %s", job_id, exc_info=True)
    stale = utcnow() - timedelta(seconds=settings.dispatch_retry_s)
    with sessions() as session:
        resend = session.scalars(
            select(JobRecord.id)
            .where(
                JobRecord.status == "queued",
                or_(JobRecord.dispatched_at < stale, JobRecord.id.in_(requeued)),
            )
            .limit(500)
        ).all()
    sent = [job_id for job_id in resend if _send(sessions, celery, settings, job_id)]
    sent += fill_window(sessions, celery, settings)
    return {"requeued": requeued, "ended": ended, "sent": sent}
