"""The job state machine. Every status change is a compare-and-set UPDATE on the job row.

    queued ──start──▶ running ──succeed──▶ succeeded
      │                 │ └────fail─────▶ failed
      │                 └──cancel──▶ cancelling ──ack──▶ cancelled
      └──────cancel──────────────────────────────────────▶ cancelled

A transition names the states it may leave; when the row is no longer in one of them (another
worker won, the user cancelled) the UPDATE matches nothing and the caller is told so.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.core.models import JobRecord, utcnow

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE = frozenset({"running", "cancelling"})


def _cas(sessions: sessionmaker, job_id: str, condition, **values) -> bool:
    """Apply ``values`` to the job when ``condition`` holds; True when a row changed."""
    values.setdefault("updated_at", utcnow())
    statement = (
        update(JobRecord).where(JobRecord.id == job_id, condition).values(version=JobRecord.version + 1, **values)
    )
    with sessions.begin() as session:
        return session.execute(statement).rowcount == 1


def start(sessions: sessionmaker, job_id: str, lease_s: float) -> bool:
    """Claim a queued job, or a running one whose lease expired (its worker died)."""
    now = utcnow()
    claimable = or_(
        JobRecord.status == "queued",
        and_(JobRecord.status == "running", JobRecord.lease_expires_at < now),
    )
    return _cas(
        sessions,
        job_id,
        and_(claimable, JobRecord.attempt < JobRecord.max_attempts),
        status="running",
        attempt=JobRecord.attempt + 1,
        started_at=now,
        lease_expires_at=now + timedelta(seconds=lease_s),
        error=None,
    )


def _mine(attempt: int | None, condition):
    """``condition``, fenced to one execution: a worker that lost its lease (the job was
    re-queued and claimed again, so ``attempt`` moved on) can no longer change the row."""
    return condition if attempt is None else and_(condition, JobRecord.attempt == attempt)


def report_progress(
    sessions: sessionmaker, job_id: str, stage: str, progress: dict, lease_s: float, attempt: int | None = None
) -> bool:
    """Record progress and extend the lease. Returns True when cancellation was requested,
    or (with ``attempt``) when this execution no longer owns the job and must stop."""
    owned = _cas(
        sessions,
        job_id,
        _mine(attempt, JobRecord.status.in_(ACTIVE)),
        stage=stage,
        progress=progress,
        lease_expires_at=utcnow() + timedelta(seconds=lease_s),
    )
    if attempt is not None and not owned:
        return True
    return cancel_requested(sessions, job_id)


def renew_lease(sessions: sessionmaker, job_id: str, attempt: int, lease_s: float) -> bool:
    """The heartbeat of a live execution; False when the job is no longer this execution's."""
    statement = (
        update(JobRecord)
        .where(JobRecord.id == job_id, JobRecord.status.in_(ACTIVE), JobRecord.attempt == attempt)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )  # no version bump: a heartbeat is not a change a poller (ETag) should see
    with sessions.begin() as session:
        return session.execute(statement).rowcount == 1


def cancel_requested(sessions: sessionmaker, job_id: str) -> bool:
    with sessions() as session:
        flag = session.scalar(select(JobRecord.cancel_requested).where(JobRecord.id == job_id))
    return bool(flag)


def has_ended(sessions: sessionmaker, job_id: str) -> bool:
    """The job is succeeded, failed or cancelled: no execution will run it again."""
    with sessions() as session:
        return session.scalar(select(JobRecord.status).where(JobRecord.id == job_id)) in TERMINAL


def succeed(
    sessions: sessionmaker, job_id: str, result: dict, artifacts: list[dict], attempt: int | None = None
) -> bool:
    return _cas(
        sessions,
        job_id,
        _mine(attempt, JobRecord.status == "running"),
        status="succeeded",
        result=result,
        artifacts=artifacts,
        finished_at=utcnow(),
        lease_expires_at=None,
        progress={"percent": 100.0},
    )


def fail(
    sessions: sessionmaker, job_id: str, code: str, message: str, stage: str | None, attempt: int | None = None
) -> bool:
    error = {"code": code, "message": message, "stage": stage}
    return _cas(
        sessions,
        job_id,
        _mine(attempt, JobRecord.status.in_({"queued", *ACTIVE})),
        status="failed",
        error=error,
        finished_at=utcnow(),
        lease_expires_at=None,
    )


def acknowledge_cancel(sessions: sessionmaker, job_id: str, attempt: int | None = None) -> bool:
    """The worker stopped a job whose cancellation was requested."""
    return _cas(
        sessions,
        job_id,
        _mine(attempt, and_(JobRecord.status.in_(ACTIVE), JobRecord.cancel_requested.is_(True))),
        status="cancelled",
        finished_at=utcnow(),
        lease_expires_at=None,
    )


def request_cancel(sessions: sessionmaker, job_id: str) -> bool:
    """Cancel now when queued; ask the worker to stop when running. False when finished."""
    if _cas(
        sessions, job_id, JobRecord.status == "queued", status="cancelled", cancel_requested=True, finished_at=utcnow()
    ):
        return True
    return _cas(sessions, job_id, JobRecord.status.in_(ACTIVE), status="cancelling", cancel_requested=True)


def requeue_expired(sessions: sessionmaker, now: datetime | None = None) -> tuple[list[str], list[str]]:
    """The reaper: running jobs whose lease expired go back to queued, or fail `worker-lost`
    when their attempts are spent (a `cancelling` one is cancelled). Returns (requeued ids,
    ended ids): the ended jobs have no worker any more to remove what they stored."""
    now = now or utcnow()
    with sessions() as session:
        expired = session.execute(
            select(JobRecord.id, JobRecord.status, JobRecord.attempt, JobRecord.max_attempts).where(
                JobRecord.status.in_(ACTIVE), JobRecord.lease_expires_at < now
            )
        ).all()
    requeued, ended = [], []
    for job_id, status, attempt, max_attempts in expired:
        stale = and_(JobRecord.status.in_(ACTIVE), JobRecord.lease_expires_at < now)
        if status == "cancelling":
            if _cas(sessions, job_id, stale, status="cancelled", finished_at=now, lease_expires_at=None):
                ended.append(job_id)
        elif attempt < max_attempts:
            if _cas(sessions, job_id, stale, status="queued", lease_expires_at=None):
                requeued.append(job_id)
        elif _cas(
            sessions,
            job_id,
            stale,
            status="failed",
            finished_at=now,
            lease_expires_at=None,
            error={
                "code": "worker-lost",
                "stage": None,
                "message": f"the worker running this job was lost {attempt} times; retry the job",
            },
        ):
            ended.append(job_id)
    return requeued, ended


def get(session: Session, job_id: str, tenant: str) -> JobRecord | None:
    """The job when it belongs to ``tenant`` (another tenant's id reads as missing)."""
    job = session.get(JobRecord, job_id)
    return job if job is not None and job.tenant == tenant else None
