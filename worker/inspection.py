"""Validation of uploads in a worker: load the model or dataset for real and record what it
is (``validating → ready | invalid``), so jobs only start from files the engine can read."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import update

from service.core.config import Settings
from service.core.models import DatasetRecord, ModelRecord
from service.core.storage import ArtifactStore, StorageUnavailable
from worker.memory import release_memory

log = logging.getLogger("shears.worker")


def _finish(sessions, record: type, item_id: str, status: str, info=None, error=None, **columns) -> None:
    with sessions.begin() as session:
        session.execute(
            update(record)
            .where(record.id == item_id, record.status == "validating")
            .values(status=status, info=info, error=error, **columns)
        )


Examine = Callable[[object], tuple[dict, dict]]
"""Reads an upload row's data for real: returns (info, other columns to set)."""


def _inspect(record: type, item_id: str, sessions, examine: Examine, time_limit_s: int) -> str:
    try:
        return _inspect_once(record, item_id, sessions, examine, time_limit_s)
    finally:
        release_memory()  # the converted model and the loaded arrays must not stay under the next job


def _inspect_once(record: type, item_id: str, sessions, examine: Examine, time_limit_s: int) -> str:
    with sessions() as session:
        row = session.get(record, item_id)
        if row is None or row.status != "validating":
            return "skipped"
    started = time.monotonic()
    try:
        info, columns = examine(row)  # imports the engine too: all of it runs under the time limit
        if time.monotonic() - started > time_limit_s:  # the soft limit fired inside a library's `except`
            raise SoftTimeLimitExceeded()
    except Exception as error:  # noqa: BLE001 - any failure to read the upload makes it invalid
        code, message = getattr(error, "code", None) or "unreadable", str(error)
        # past the limit, whatever a library made of the soft limit's exception (the operator check
        # reported it as an unsupported operator once) is the timeout
        if isinstance(error, SoftTimeLimitExceeded) or time.monotonic() - started > time_limit_s:
            code, message = (
                "inspection-timeout",
                (
                    f"Checking this {record.__tablename__[:-1]} took longer than {time_limit_s} s "
                    "(SHEARS_INSPECT_TIME_LIMIT_S); upload a smaller model (fewer nodes) or dataset, "
                    "or ask the operator to raise the limit."
                ),
            )
        elif isinstance(error, StorageUnavailable):
            code = "storage-unavailable"
        log.info("%s %s invalid: %s", record.__tablename__, item_id, message)
        _finish(sessions, record, item_id, "invalid", error={"code": code, "message": message[:2000]})
        return "invalid"
    _finish(sessions, record, item_id, "ready", info=info, **columns)
    return "ready"


def _stored_file(store: ArtifactStore, examine_file: Callable[[Path, object], dict]) -> Examine:
    """Examine the row's uploaded file, copied to a temporary directory removed afterwards."""

    def examine(row) -> tuple[dict, dict]:
        with tempfile.TemporaryDirectory(prefix="shears-inspect-") as tmp:
            suffix = Path(row.filename).suffix
            path = Path(tmp) / (suffix and f"upload{suffix}" or "upload")
            store.get_file(row.storage_key, path)
            return examine_file(path, row), {}

    return examine


def inspect_model_upload(
    model_id: str, settings: Settings, sessions, store: ArtifactStore, ready: Callable[[], None] = lambda: None
) -> str:
    """``ready`` returns once the worker may import the engine (its warm-up is done)."""

    def examine(path: Path, row: ModelRecord) -> dict:
        ready()
        from worker.io.models import inspect_upload

        return inspect_upload(path, architecture=row.architecture, allow_torchscript=settings.allow_torchscript_upload)

    return _inspect(ModelRecord, model_id, sessions, _stored_file(store, examine), settings.inspect_time_limit_s)


def examine_dataset_file(path: Path, settings: Settings) -> dict:
    """What a dataset file holds, read as a job reads it (every image of an archive decoded once)."""
    from service.core.intake.archives import check_image_archive
    from worker.io.datasets import is_image_archive, load_dataset_file

    limits = settings.archive_limits()
    index = check_image_archive(path, limits) if is_image_archive(path) else None
    data = load_dataset_file(path, max_bytes=settings.max_dataset_bytes, limits=limits)
    info = {
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "labelled": data.labelled,
        "train_samples": len(data.x_train),
        "val_samples": len(data.x_val),
    }
    if index is not None:
        info.update(
            format=f"image-{index.kind}",
            images=index.summary(),
            note="input_shape is for the default preprocessing; jobs declare theirs in spec.preprocessing",
        )
    return info


def inspect_dataset_upload(
    dataset_id: str, settings: Settings, sessions, store: ArtifactStore, ready: Callable[[], None] = lambda: None
) -> str:
    """An uploaded file, or a dataset registered by reference (``source_uri``: listed and
    checked where it lives, its manifest stored; see worker.references)."""

    def examine_file(path: Path, row: DatasetRecord) -> dict:
        ready()
        return examine_dataset_file(path, settings)

    uploaded = _stored_file(store, examine_file)

    def examine(row: DatasetRecord) -> tuple[dict, dict]:
        if row.source_uri is None:
            return uploaded(row)
        ready()
        from worker.references import inspect_reference

        return inspect_reference(row, settings, store)

    return _inspect(DatasetRecord, dataset_id, sessions, examine, settings.inspect_time_limit_s)
