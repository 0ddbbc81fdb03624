"""A job whose inputs vanished fails with a reason the user can act on, never internal-error
(real SQLite database and file store; the job never reaches the engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core import crud
from service.core.config import Settings
from service.core.db import create_schema, make_engine, make_session_factory
from service.core.models import JobRecord
from service.core.storage import open_store
from worker.execution import execute_job


@pytest.fixture
def world(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings)
    create_schema(engine)
    sessions, store = make_session_factory(engine), open_store(settings)
    model = crud.new_upload("model", "t", "m.onnx", "0" * 64, 3, format="onnx")
    source = tmp_path / "m.onnx"
    source.write_bytes(b"\x08\x07\x00")
    store.put_file(model.storage_key, source)
    job = JobRecord(id="job_1", tenant="t", model_id=model.id, spec={"dataset": {"builtin": "digits"}}, progress={},
                    artifacts=[], status="queued")  # fmt: skip
    with sessions.begin() as session:
        session.add_all([model, job])
    yield settings, sessions, store, model
    engine.dispose()


def _error(sessions) -> dict:
    with sessions() as session:
        job = session.get(JobRecord, "job_1")
        assert job.status == "failed"
        return job.error


def test_a_job_whose_model_row_was_deleted_fails_as_input_deleted(world) -> None:
    settings, sessions, store, model = world
    crud.delete_rows(sessions, [model])
    assert execute_job("job_1", settings, sessions, store) == "failed"
    error = _error(sessions)
    assert error["code"] == "input-deleted" and model.id in error["message"] and "upload it again" in error["message"]


def test_a_job_whose_model_file_was_deleted_fails_as_input_deleted(world) -> None:
    settings, sessions, store, model = world
    store.delete_prefix(model.storage_key)
    assert execute_job("job_1", settings, sessions, store) == "failed"
    error = _error(sessions)
    assert error["code"] == "input-deleted" and model.id in error["message"]
