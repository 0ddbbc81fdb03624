"""Row logic of uploads and jobs (reads, inserts, deletes), so that routers hold no SQL.

Functions take a ``Session`` (or a ``sessionmaker`` when they own the transaction) and plain
values; they know nothing of HTTP. Status changes of a job stay in ``service.core.jobs``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.core.models import DatasetRecord, JobRecord, ModelRecord, new_id

UPLOAD_RECORDS: dict[str, type] = {"model": ModelRecord, "dataset": DatasetRecord}
_ID_PREFIX = {"model": "mdl", "dataset": "ds"}
PENDING = ("queued", "running", "cancelling")  # jobs that will still read their inputs


# ----------------------------------------------------------------------------- uploads


def new_upload(
    kind: str, tenant: str, filename: str, sha256: str, size_bytes: int, **columns
) -> ModelRecord | DatasetRecord:
    """An unsaved upload row, ``validating`` until a worker's inspection says ready or invalid."""
    record = UPLOAD_RECORDS[kind]
    row = record(
        id=new_id(_ID_PREFIX[kind]),
        tenant=tenant,
        filename=filename,
        sha256=sha256,
        size_bytes=size_bytes,
        status="validating",
        **columns,
    )
    row.storage_key = f"uploads/{kind}s/{row.id}"
    return row


def new_reference(tenant: str, uri: str, name: str) -> DatasetRecord:
    """An unsaved dataset row registered by reference: no file is stored; the inspection stores
    the manifest under ``storage_key`` and sets ``sha256`` (of the manifest) and ``size_bytes``."""
    return new_upload("dataset", tenant, name[:255] or "dataset", "", 0, source_uri=uri)


def owned_upload(session: Session, kind: str, item_id: str, tenant: str) -> ModelRecord | DatasetRecord | None:
    """The upload when it belongs to ``tenant`` (another tenant's id reads as missing)."""
    row = session.get(UPLOAD_RECORDS[kind], item_id)
    return row if row is not None and row.tenant == tenant else None


def list_uploads(session: Session, kind: str, tenant: str, limit: int = 500) -> list:
    record = UPLOAD_RECORDS[kind]
    query = select(record).where(record.tenant == tenant).order_by(record.created_at.desc()).limit(limit)
    return list(session.scalars(query))


def pending_job_using(session: Session, kind: str, item_id: str) -> str | None:
    """The id of a queued or running job that reads this upload, if any."""
    column = JobRecord.model_id if kind == "model" else JobRecord.dataset_id
    return session.scalar(select(JobRecord.id).where(column == item_id, JobRecord.status.in_(PENDING)).limit(1))


def delete_rows(sessions: sessionmaker, rows: list) -> None:
    """Remove upload rows (a failed multi-row create rolls back what it stored)."""
    with sessions.begin() as session:
        for row in rows:
            found = session.get(type(row), row.id)
            if found is not None:
                session.delete(found)


# ----------------------------------------------------------------------------- jobs


def job_by_idempotency_key(session: Session, tenant: str, key: str) -> JobRecord | None:
    return session.scalar(select(JobRecord).where(JobRecord.tenant == tenant, JobRecord.idempotency_key == key))


def insert_job(sessions: sessionmaker, job: JobRecord, uploads: list | None = None) -> tuple[JobRecord, bool]:
    """Insert the job (and the uploads it brought) in one transaction. Returns (job, created);
    when a concurrent request with the same Idempotency-Key won, (that job, False) and
    nothing of this request is kept."""
    with sessions() as session:
        session.add_all([*(uploads or []), job])
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            if not job.idempotency_key:
                raise
            existing = job_by_idempotency_key(session, job.tenant, job.idempotency_key)
            if existing is None:
                raise
            return existing, False
    return job, True


def page_jobs(
    session: Session, tenant: str, status: str | None, limit: int, after: tuple[datetime, str] | None
) -> list[JobRecord]:
    """Up to ``limit + 1`` jobs, newest first, strictly after the cursor ``(created_at, id)``."""
    query = select(JobRecord).where(JobRecord.tenant == tenant)
    if status:
        query = query.where(JobRecord.status == status)
    if after:
        created, job_id = after
        if session.bind.dialect.name == "sqlite":
            created = created.replace(tzinfo=None)
        query = query.where(
            or_(JobRecord.created_at < created, and_(JobRecord.created_at == created, JobRecord.id < job_id))
        )
    return list(session.scalars(query.order_by(JobRecord.created_at.desc(), JobRecord.id.desc()).limit(limit + 1)))


# ----------------------------------------------------------------------------- metrics


def job_counts_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each status (statuses without jobs are absent)."""
    return dict(session.execute(select(JobRecord.status, func.count()).group_by(JobRecord.status)).all())


def recent_succeeded_results(session: Session, limit: int) -> list[dict | None]:
    """The ``result`` of the ``limit`` most recently finished succeeded jobs, newest first."""
    return list(
        session.scalars(
            select(JobRecord.result)
            .where(JobRecord.status == "succeeded")
            .order_by(JobRecord.finished_at.desc())
            .limit(limit)
        ).all()
    )
