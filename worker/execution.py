"""Runs one job for a Celery task: claim the row, fetch inputs, run the engine, upload
artifacts, then flip the row. Owns everything about job rows and storage so that the engine
(worker.pipeline) knows nothing of them, and the task stays a thin adapter."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import shutil
import threading
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from service.core import artifacts as artifacts_spec
from service.core import jobs
from service.core.config import Settings
from service.core.contracts import JobResult
from service.core.models import DatasetRecord, JobRecord, ModelRecord
from service.core.spec import JobSpec
from service.core.storage import ArtifactNotFound, ArtifactStore, StorageUnavailable
from service.core.webhooks import deliver
from worker.checkpoints import CheckpointMirror, checkpoint_prefix, discard_checkpoints
from worker.memory import release_memory

log = logging.getLogger("shears.worker")


class JobFailure(Exception):
    """A failure with a stable code the user sees on the job."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProgressReporter:
    """Throttled progress writes to the job row; remembers whether cancellation was asked
    (or the job was taken away from this execution)."""

    def __init__(self, sessions, job_id: str, settings: Settings, attempt: int | None = None) -> None:
        self.sessions, self.job_id, self.settings, self.attempt = sessions, job_id, settings, attempt
        self.cancelled = False
        self._last = 0.0
        self.stage = "starting"

    def __call__(self, event: dict) -> None:
        self.stage = event.get("stage", self.stage)
        now = time.monotonic()
        final = event.get("epoch") == event.get("epochs")
        if now - self._last >= self.settings.progress_interval_s or final:
            self._last = now
            try:
                self.cancelled = jobs.report_progress(
                    self.sessions, self.job_id, self.stage, event, self.settings.lease_s, self.attempt
                )
            except Exception:  # noqa: BLE001 - a database blip must not end a training run
                log.warning("progress of job %s not recorded", self.job_id, exc_info=True)

    def should_cancel(self) -> bool:
        return self.cancelled


class JobClock:
    """The job's own time limit, counted from the start of this execution and checked before
    every optimizer step. Celery's soft time limit (a signal, with a grace period on top, see
    service.core.dispatch) stays the backstop for stages without steps: a signal can land in
    a library's ``except Exception`` and be lost, and it also counts the worker's warm-up."""

    def __init__(self, limit_s: float) -> None:
        self.deadline = time.monotonic() + limit_s

    def check(self) -> None:
        if time.monotonic() >= self.deadline:
            raise SoftTimeLimitExceeded()


class Heartbeat:
    """Renews the job's lease every lease_s/3 from a background thread while this process
    lives, also through stages that report no progress (imports, export, upload). When the
    process dies the renewals stop and the reaper re-queues the job after ``lease_s``."""

    def __init__(self, sessions, job_id: str, attempt: int, lease_s: float) -> None:
        self.sessions, self.job_id, self.attempt, self.lease_s = sessions, job_id, attempt, lease_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not jobs.renew_lease(self.sessions, self.job_id, self.attempt, self.lease_s):
                    self.lost = True  # re-queued and claimed by another execution, or ended
                    return
            except Exception:  # noqa: BLE001 - database blip: try again next beat
                log.warning("lease renewal of job %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def execute_job(job_id: str, settings: Settings, sessions, store: ArtifactStore) -> str:
    """Run ``job_id`` to a terminal state (or leave it to another worker). Returns the status:
    ``skipped`` when another execution holds the job (a duplicate delivery), ``lost`` when
    the job was taken away from this one while it ran (its lease expired)."""
    if not jobs.start(sessions, job_id, settings.lease_s):
        _discard_checkpoints_if_ended(job_id, settings, sessions, store)
        return "skipped"  # another worker holds it, it was cancelled, or it already ended
    with sessions() as session:
        job = session.get(JobRecord, job_id)
        attempt = job.attempt
        spec = JobSpec.model_validate(job.spec)
        model_row = session.get(ModelRecord, job.model_id)
        dataset_row = session.get(DatasetRecord, job.dataset_id) if job.dataset_id else None
        missing = _missing_inputs(job, model_row, dataset_row)
    if missing:  # deleted while the job waited (the API refuses that; a race can still get here)
        if jobs.fail(sessions, job_id, "input-deleted", missing, "starting", attempt):
            _notify(settings, sessions, job_id, spec)
            return "failed"
        return "lost"
    log.info("job %s attempt %d started", job_id, attempt)
    try:
        with Heartbeat(sessions, job_id, attempt, settings.lease_s) as heartbeat:
            return _run(job_id, attempt, spec, model_row, dataset_row, settings, sessions, store, heartbeat)
    finally:
        release_memory()  # the next task of this pool process starts from a trimmed heap


def _missing_inputs(job: JobRecord, model_row, dataset_row) -> str:
    gone = [
        f"{kind} {item_id}"
        for kind, item_id, row in (("model", job.model_id, model_row), ("dataset", job.dataset_id, dataset_row))
        if item_id and row is None
    ]
    return (
        f"the {' and '.join(gone)} this job uses was deleted before it ran; upload it again and submit a new job"
        if gone
        else ""
    )


def _fetch(store: ArtifactStore, row, kind: str, path: Path) -> None:
    """Copy an input upload to ``path``; ``input-deleted`` when its file is gone."""
    try:
        store.get_file(row.storage_key, path)
    except ArtifactNotFound as error:
        raise JobFailure(
            "input-deleted",
            f"the {kind} {row.id} this job uses was deleted before it ran; upload it again and submit a new job",
        ) from error


def _run(job_id, attempt, spec, model_row, dataset_row, settings, sessions, store, heartbeat) -> str:
    workdir = settings.data_dir / "work" / job_id / str(attempt)
    checkpoints = _local_checkpoints(settings, job_id)
    reporter = ProgressReporter(sessions, job_id, settings, attempt)
    clock = JobClock(spec.time_limit_s)
    mirror = CheckpointMirror(store, job_id, checkpoints, attempt, may_write=lambda: not heartbeat.lost)
    status = "unrecorded"  # until the row says otherwise: checkpoints are kept for a retry
    images = None
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        resumed_from = mirror.restore()  # the stored checkpoints, whichever host wrote them
        model_path = workdir / "input-model"
        _fetch(store, model_row, "model", model_path)
        dataset_path = images = None
        if dataset_row is not None and dataset_row.source_uri:  # registered by reference: read where it lives
            from worker.references import open_reference

            dataset_path, images = open_reference(dataset_row, settings, store, workdir)
        elif dataset_row is not None:
            dataset_path = workdir / f"input-dataset{Path(dataset_row.filename).suffix.lower()[:16]}"
            _fetch(store, dataset_row, "dataset", dataset_path)
        from worker.pipeline import PipelineInputs, run_pipeline
        from worker.pruning.training import Cancelled

        inputs = PipelineInputs(
            model_path=model_path,
            architecture=spec.architecture or model_row.architecture,
            dataset_path=dataset_path,
            builtin_dataset=spec.dataset.builtin if spec.dataset else None,
            images=images,
            allow_torchscript=settings.allow_torchscript_upload,
            device=settings.device,
            job_id=job_id,
        )

        def should_cancel() -> bool:
            clock.check()
            return reporter.should_cancel() or heartbeat.lost

        try:
            outcome = run_pipeline(
                inputs,
                spec,
                workdir / "out",
                on_progress=_mirrored(mirror, reporter),
                should_cancel=should_cancel,
                checkpoint_dir=checkpoints,
            )
        except Cancelled:
            status = "cancelled" if jobs.acknowledge_cancel(sessions, job_id, attempt) else "lost"
            return status
        if heartbeat.lost or not jobs.renew_lease(sessions, job_id, attempt, settings.lease_s):
            status = "lost"  # another execution owns the job: never overwrite its artifacts
            return status
        if resumed_from is not None:
            _note_resume(outcome, resumed_from, workdir / "out")
        summary = JobResult.model_validate(outcome.summary).model_dump(mode="json")  # the published contract
        artifacts = _upload_artifacts(store, job_id, outcome.files)
        reporter.stage = "done"
        if jobs.succeed(sessions, job_id, summary, artifacts, attempt):
            status = "succeeded"
        elif jobs.acknowledge_cancel(sessions, job_id, attempt):  # cancelled while uploading
            _discard_artifacts(store, job_id)
            status = "cancelled"
        else:
            status = "lost"
    except Exception as error:  # noqa: BLE001 - every failure must end on the row, with a reason
        code, message = classify_failure(error, settings, spec.time_limit_s)
        log.exception("job %s failed (%s)", job_id, code)
        if jobs.fail(sessions, job_id, code, message, reporter.stage, attempt):
            status = "failed"
            _discard_artifacts(store, job_id)
        else:
            status = "lost"
    finally:
        if images is not None:
            images.source.close()  # its reader threads
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            workdir.parent.rmdir()  # work/<job_id>, once no attempt uses it
        if status in {"succeeded", "failed", "cancelled"}:
            shutil.rmtree(workdir.parent, ignore_errors=True)  # also what killed attempts left
            mirror.discard()  # local copies and the stored ones
            _notify(settings, sessions, job_id, spec)
    return status


def _discard_checkpoints_if_ended(job_id: str, settings: Settings, sessions, store: ArtifactStore) -> None:
    """A redelivered task of an ended job: remove the checkpoints its worker may have left when
    it died between ending the row and discarding them (Celery redelivers a task whose worker was
    lost, ``task_reject_on_worker_lost``). Checkpoints of a job another worker runs are kept."""
    if jobs.has_ended(sessions, job_id):
        discard_checkpoints(store, checkpoint_prefix(job_id), _local_checkpoints(settings, job_id))


def _local_checkpoints(settings: Settings, job_id: str) -> Path:
    """The training loop's checkpoint directory for ``job_id`` on this host."""
    return settings.data_dir / "checkpoints" / job_id


def _mirrored(mirror: CheckpointMirror, reporter: ProgressReporter):
    """The progress callback: an epoch's checkpoints are stored before the row shows the epoch."""

    def on_progress(event: dict) -> None:
        mirror.after_epoch(event)
        reporter(event)

    return on_progress


def _note_resume(outcome, resumed_from: dict, out_dir: Path) -> None:
    """Say in the summary and the report where this execution resumed (stage, epoch, attempt)."""
    from worker.report import write_report

    outcome.summary["resumed_from"] = resumed_from
    outcome.report["resumed_from"] = resumed_from
    write_report(outcome.report, out_dir)


def _discard_artifacts(store: ArtifactStore, job_id: str) -> None:
    """Remove what a failed job uploaded; the row (failed, no artifact list) already hides it."""
    try:
        store.delete_prefix(artifacts_spec.job_prefix(job_id))
    except Exception:  # noqa: BLE001 - storage down: the failed row never lists these objects
        log.warning("could not remove the partial artifacts of job %s", job_id, exc_info=True)


def _causes(error: BaseException):
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _storage_unreachable(error: BaseException) -> bool:
    return any(isinstance(cause, StorageUnavailable) for cause in _causes(error))


# How libraries word an allocation that failed (torch's CPU allocator, CUDA, onnxruntime, C++)
_OUT_OF_MEMORY_WORDS = (
    "can't allocate memory",
    "cannot allocate memory",
    "out of memory",
    "failed to allocate",
    "bad_alloc",
    "bad allocation",
)


def _out_of_memory(error: BaseException) -> bool:
    """True when an allocation failed anywhere in the chain, however a library wrapped it:
    a MemoryError, ENOMEM (mmap, threads under the worker's address-space limit) or a
    library's own exception type whose message says so."""
    for cause in _causes(error):
        if isinstance(cause, MemoryError):
            return True
        if isinstance(cause, OSError) and cause.errno == errno.ENOMEM:
            return True
        text = str(cause).lower()
        if any(words in text for words in _OUT_OF_MEMORY_WORDS):
            return True
    return False


def _timed_out(error: BaseException) -> bool:
    """True when the time limit fired, also when a library caught it and raised its own error."""
    return any(isinstance(cause, SoftTimeLimitExceeded) for cause in _causes(error))


def classify_failure(error: BaseException, settings: Settings, time_limit_s: int | None = None) -> tuple[str, str]:
    """The stable code and the how-to-fix message a user sees for a failed job."""
    if _timed_out(error):
        return "timeout", f"the job ran past time_limit_s={time_limit_s}; raise it in the spec or use fewer epochs"
    if _out_of_memory(error):
        limit = f"{settings.worker_memory_limit_mb} MiB" if settings.worker_memory_limit_mb else "its memory"
        return "out-of-memory", (
            f"the job needed more memory than the worker allows ({limit}); lower "
            "training.batch_size or use a smaller model, or ask the operator for "
            "larger workers (SHEARS_WORKER_MEMORY_LIMIT_MB)"
        )
    if _storage_unreachable(error):
        return "storage-unavailable", (
            f"the artifact store could not be reached ({type(error).__name__}) after "
            f"{settings.s3_max_attempts} attempts with backoff; nothing was kept. "
            "Submit the job again (with a new Idempotency-Key) once storage is back"
        )
    code = getattr(error, "code", None) or "internal-error"
    return code, f"{error}"[:2000] or type(error).__name__


def _upload_artifacts(store: ArtifactStore, job_id: str, files: dict[str, Path]) -> list[dict]:
    """Upload every artifact; the job succeeds only after all of them are stored."""
    artifacts = []
    for name in sorted(files, key=artifacts_spec.order):
        path = files[name]
        store.put_file(artifacts_spec.artifact_key(job_id, name), path)
        artifacts.append(
            {
                "name": name,
                "size_bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "media_type": artifacts_spec.media_type(name),
            }
        )
    return artifacts


def _notify(settings: Settings, sessions, job_id: str, spec: JobSpec) -> None:
    if not spec.callback_url or not settings.webhook_secret:
        return
    with sessions() as session:
        job = session.get(JobRecord, job_id)
        if job.status not in jobs.TERMINAL:
            return
        payload = {
            "id": job.id,
            "status": job.status,
            "error": job.error,
            "acceptance": (job.result or {}).get("acceptance"),
        }
    try:
        deliver(spec.callback_url, payload, settings.webhook_secret, settings.allow_private_callbacks)
    except Exception:  # noqa: BLE001 - a webhook never changes the job's outcome
        log.warning("webhook for job %s not delivered", job_id, exc_info=True)
