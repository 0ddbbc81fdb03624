"""Job execution on a real SQLite database and file store: a job whose inputs vanished fails
with a reason the user can act on (never internal-error); a succeeded job stores the typed
result contract and a report that names the job; a redelivered task of an ended job removes
the checkpoints a dead worker left."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from service.core import artifacts, crud
from service.core.config import Settings
from service.core.contracts import JobReport, JobResult
from service.core.db import create_schema, make_engine, make_session_factory
from service.core.models import JobRecord, utcnow
from service.core.storage import ArtifactNotFound, open_store
from tests.factories import digits_mlp_onnx
from worker.checkpoints import checkpoint_prefix
from worker.execution import execute_job

SPEC = {
    "dataset": {"builtin": "digits"},
    "pipeline": [{"prune_channels": {"ratio": 0.25}}, {"finetune": {"epochs": 1}}],
    "export": {"formats": ["onnx"]},
    "acceptance": {"max_accuracy_drop": 100.0},
}


@pytest.fixture
def world(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings)
    create_schema(engine)
    sessions, store = make_session_factory(engine), open_store(settings)
    model = crud.new_upload("model", "t", "m.onnx", "0" * 64, 3, format="onnx")
    source = tmp_path / "m.onnx"
    source.write_bytes(digits_mlp_onnx())
    store.put_file(model.storage_key, source)
    job = JobRecord(id="job_1", tenant="t", model_id=model.id, spec=SPEC, progress={}, artifacts=[], status="queued")
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


def test_a_succeeded_job_stores_the_typed_result_and_a_report_naming_the_job(world, tmp_path) -> None:
    settings, sessions, store, _ = world
    assert execute_job("job_1", settings, sessions, store) == "succeeded"
    with sessions() as session:
        job = session.get(JobRecord, "job_1")
        result, listed = JobResult.model_validate(job.result), job.artifacts
    assert result.acceptance.passed and result.parameters.after < result.parameters.before
    assert [a["name"] for a in listed] == ["model.onnx", "report.json", "report.html"]
    assert all(a["media_type"] == artifacts.media_type(a["name"]) for a in listed)
    store.get_file(artifacts.artifact_key("job_1", "report.json"), tmp_path / "report.json")
    report = JobReport.model_validate(json.loads((tmp_path / "report.json").read_text()))
    assert report.job_id == "job_1" and report.acceptance == result.acceptance
    store.get_file(artifacts.artifact_key("job_1", "report.html"), tmp_path / "report.html")
    assert "job_1" in (tmp_path / "report.html").read_text()


def test_progress_writes_every_stage_start_and_last_epoch_and_throttles_the_epochs_between(world) -> None:
    from worker.execution import ProgressReporter

    settings, sessions, _, _ = world
    with sessions.begin() as session:
        session.get(JobRecord, "job_1").status = "running"
    reporter = ProgressReporter(sessions, "job_1", settings.model_copy(update={"progress_interval_s": 3600.0}))

    def recorded() -> tuple[str, dict]:
        with sessions() as session:
            job = session.get(JobRecord, "job_1")
            return job.stage, job.progress

    reporter({"stage": "0-prune_channels", "percent": 0.0})
    assert recorded() == ("0-prune_channels", {"stage": "0-prune_channels", "percent": 0.0})
    reporter({"stage": "1-finetune", "percent": 0.0})  # a new stage: written at once
    assert recorded()[0] == "1-finetune"
    reporter({"stage": "1-finetune", "epoch": 1, "epochs": 2, "percent": 50.0})  # within the interval
    assert recorded()[1].get("epoch") is None
    reporter({"stage": "1-finetune", "epoch": 2, "epochs": 2, "percent": 99.0})  # the stage's last epoch
    assert recorded()[1] == {"stage": "1-finetune", "epoch": 2, "epochs": 2, "percent": 99.0}


def _leave_checkpoints(settings, store, tmp_path) -> str:
    """A stored checkpoint and its local copy, as a worker leaves them mid-job."""
    (tmp_path / "0-finetune.pt").write_bytes(b"epoch-3")
    store.put_file(checkpoint_prefix("job_1") + "0-finetune.pt", tmp_path / "0-finetune.pt")
    local = settings.data_dir / "checkpoints" / "job_1"
    local.mkdir(parents=True)
    (local / "0-finetune.pt").write_bytes(b"epoch-3")
    return checkpoint_prefix("job_1") + "0-finetune.pt"


def _status(sessions, status: str) -> None:
    with sessions.begin() as session:
        session.get(JobRecord, "job_1").status = status


@pytest.mark.parametrize("ended", ["succeeded", "failed", "cancelled"])
def test_a_redelivered_task_of_an_ended_job_removes_the_checkpoints_its_dead_worker_left(
    world, tmp_path, ended
) -> None:
    settings, sessions, store, _ = world
    key = _leave_checkpoints(settings, store, tmp_path)
    _status(sessions, ended)  # the worker ended the row and died before discarding
    assert execute_job("job_1", settings, sessions, store) == "skipped"
    with pytest.raises(ArtifactNotFound):
        b"".join(store.iter_bytes(key))
    assert not (settings.data_dir / "checkpoints" / "job_1").exists()


def test_a_duplicate_delivery_of_a_running_job_keeps_the_checkpoints_its_worker_resumes_from(world, tmp_path) -> None:
    settings, sessions, store, _ = world
    key = _leave_checkpoints(settings, store, tmp_path)
    with sessions.begin() as session:
        job = session.get(JobRecord, "job_1")
        job.status, job.attempt, job.lease_expires_at = "running", 1, utcnow() + timedelta(hours=1)
    assert execute_job("job_1", settings, sessions, store) == "skipped"
    assert b"".join(store.iter_bytes(key)) == b"epoch-3"
    assert (settings.data_dir / "checkpoints" / "job_1" / "0-finetune.pt").exists()
