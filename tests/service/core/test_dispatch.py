"""Fair dispatch on real SQLite and kombu's filesystem broker (no worker: a claim is made the
way a worker makes it, with ``jobs.start``)."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from service.core import jobs
from service.core.artifacts import job_prefix
from service.core.config import Settings
from service.core.db import create_schema, make_engine, make_session_factory
from service.core.dispatch import dispatch_job, reap
from service.core.models import JobRecord, new_id, utcnow
from service.core.queue import make_celery
from service.core.storage import open_store


def _environment(tmp_path: Path, window: int):
    settings = Settings(data_dir=tmp_path, dispatch_window=window)
    engine = make_engine(settings)
    create_schema(engine)
    return settings, make_session_factory(engine), make_celery(settings)


def _post(sessions, celery, settings, tenant: str) -> str:
    """What POST /v1/jobs does: commit the row, then dispatch it."""
    job = JobRecord(
        id=new_id("job"), tenant=tenant, model_id="mdl_x", spec={}, status="queued", progress={}, artifacts=[]
    )
    with sessions.begin() as session:
        session.add(job)
    dispatch_job(sessions, celery, settings, job.id)
    return job.id


def _sent(sessions, job_ids: list[str]) -> list[bool]:
    with sessions() as session:
        return [session.get(JobRecord, job_id).dispatched_at is not None for job_id in job_ids]


def test_one_tenants_backlog_does_not_starve_another_tenants_first_job(tmp_path: Path) -> None:
    settings, sessions, celery = _environment(tmp_path, window=2)
    backlog = [_post(sessions, celery, settings, "alpha") for _ in range(5)]
    first_of_beta = _post(sessions, celery, settings, "beta")
    assert _sent(sessions, backlog) == [True, True, False, False, False]  # only the window is in the broker
    assert _sent(sessions, [first_of_beta]) == [False]

    assert jobs.start(sessions, backlog[0], lease_s=60)  # a worker takes alpha's first job
    assert reap(sessions, celery, settings)["sent"] == [first_of_beta]  # beta goes before alpha's third

    assert jobs.start(sessions, backlog[1], lease_s=60)
    assert reap(sessions, celery, settings)["sent"] == [backlog[2]]  # then alpha again, oldest first


def test_a_cancelled_waiting_job_leaves_its_turn_to_the_next(tmp_path: Path) -> None:
    settings, sessions, celery = _environment(tmp_path, window=1)
    first, second, third = (_post(sessions, celery, settings, "alpha") for _ in range(3))
    assert jobs.request_cancel(sessions, second)
    assert jobs.start(sessions, first, lease_s=60)
    assert reap(sessions, celery, settings)["sent"] == [third]


def test_the_reaper_removes_what_a_job_it_ends_stored_and_keeps_the_checkpoints_of_a_job_it_requeues(
    tmp_path: Path,
) -> None:
    settings, sessions, celery = _environment(tmp_path, window=2)
    store = open_store(settings)
    out_of_attempts, retried = (_post(sessions, celery, settings, "alpha") for _ in range(2))
    for job_id in (out_of_attempts, retried):
        assert jobs.start(sessions, job_id, lease_s=60)
        store.put_stream(f"{job_prefix(job_id)}checkpoints/0-finetune.pt", io.BytesIO(b"epoch 3"))
    with sessions.begin() as session:  # both workers died; one job has no attempt left
        session.execute(update(JobRecord).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.execute(update(JobRecord).where(JobRecord.id == out_of_attempts).values(max_attempts=1))

    passed = reap(sessions, celery, settings, store)

    assert passed["ended"] == [out_of_attempts] and passed["requeued"] == [retried]
    assert not store.exists(f"{job_prefix(out_of_attempts)}checkpoints/0-finetune.pt")
    assert store.exists(f"{job_prefix(retried)}checkpoints/0-finetune.pt")  # the next attempt resumes from it
