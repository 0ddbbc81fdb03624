"""The job state machine on SQLite and PostgreSQL: compare-and-set transitions and the reaper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from service.core import jobs
from service.core.config import Settings
from service.core.db import create_schema, make_engine, make_session_factory
from service.core.models import JobRecord, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, tmp_path):
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
    else:
        settings = Settings(data_dir=tmp_path, database_url=request.getfixturevalue("postgres_url"))
    engine = make_engine(settings)
    create_schema(engine)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        session.execute(JobRecord.__table__.delete())
    yield factory
    engine.dispose()


def _job(sessions, **values) -> str:
    job = JobRecord(tenant="t", model_id="mdl_x", spec={}, progress={}, artifacts=[], max_attempts=2, **values)
    with sessions.begin() as session:
        session.add(job)
    return job.id


def _row(sessions, job_id: str) -> JobRecord:
    with sessions() as session:
        return session.get(JobRecord, job_id)


def test_only_one_of_two_workers_claims_a_queued_job(sessions) -> None:
    job_id = _job(sessions)
    assert jobs.start(sessions, job_id, lease_s=60) is True
    assert jobs.start(sessions, job_id, lease_s=60) is False
    row = _row(sessions, job_id)
    assert (row.status, row.attempt) == ("running", 1)


def test_a_running_job_whose_lease_expired_can_be_claimed_again(sessions) -> None:
    job_id = _job(sessions)
    jobs.start(sessions, job_id, lease_s=60)
    with sessions.begin() as session:
        session.execute(update(JobRecord).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert jobs.start(sessions, job_id, lease_s=60) is True
    assert _row(sessions, job_id).attempt == 2


def test_success_needs_a_running_job_and_bumps_the_version(sessions) -> None:
    job_id = _job(sessions)
    assert jobs.succeed(sessions, job_id, {}, []) is False
    jobs.start(sessions, job_id, lease_s=60)
    version = _row(sessions, job_id).version
    assert jobs.succeed(sessions, job_id, {"accuracy": 1}, [{"name": "model.onnx"}]) is True
    row = _row(sessions, job_id)
    assert row.status == "succeeded" and row.version > version and row.finished_at is not None


def test_cancelling_a_running_job_asks_the_worker_and_blocks_success(sessions) -> None:
    job_id = _job(sessions)
    jobs.start(sessions, job_id, lease_s=60)
    assert jobs.request_cancel(sessions, job_id) is True
    assert jobs.report_progress(sessions, job_id, "train", {"epoch": 1}, lease_s=60) is True
    assert jobs.succeed(sessions, job_id, {}, []) is False
    assert jobs.acknowledge_cancel(sessions, job_id) is True
    assert _row(sessions, job_id).status == "cancelled"
    assert jobs.request_cancel(sessions, job_id) is False


def test_the_reaper_requeues_a_lost_job_then_fails_it_as_worker_lost(sessions) -> None:
    job_id = _job(sessions)
    expired = {"lease_expires_at": utcnow() - timedelta(seconds=1)}
    for attempt in (1, 2):
        assert jobs.start(sessions, job_id, lease_s=60)
        with sessions.begin() as session:
            session.execute(update(JobRecord).values(**expired))
        requeued, ended = jobs.requeue_expired(sessions)
        if attempt == 1:
            assert (requeued, ended) == ([job_id], [])
            assert _row(sessions, job_id).status == "queued"
        else:
            assert (requeued, ended) == ([], [job_id])
    row = _row(sessions, job_id)
    assert row.status == "failed" and row.error["code"] == "worker-lost"


def test_the_reaper_ends_a_cancelling_job_whose_worker_is_gone_and_reports_it_as_ended(sessions) -> None:
    job_id = _job(sessions)
    jobs.start(sessions, job_id, lease_s=60)
    assert jobs.request_cancel(sessions, job_id) is True
    with sessions.begin() as session:
        session.execute(update(JobRecord).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert jobs.requeue_expired(sessions) == ([], [job_id])
    assert _row(sessions, job_id).status == "cancelled"


def test_a_job_with_a_live_lease_is_left_alone_by_the_reaper(sessions) -> None:
    job_id = _job(sessions)
    jobs.start(sessions, job_id, lease_s=60)
    assert jobs.requeue_expired(sessions) == ([], [])
    assert _row(sessions, job_id).status == "running"


def test_a_job_has_ended_only_once_it_succeeded_failed_or_was_cancelled(sessions) -> None:
    states = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
    ended = {status: jobs.has_ended(sessions, _job(sessions, status=status)) for status in states}
    assert ended == {status: status in {"succeeded", "failed", "cancelled"} for status in states}
