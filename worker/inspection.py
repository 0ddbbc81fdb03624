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
from service.core.storage import ArtifactStore
from worker.memory import release_memory

log = logging.getLogger("shears.worker")


def _finish(sessions, record: type, item_id: str, status: str, info=None, error=None) -> None:
    with sessions.begin() as session:
        session.execute(
            update(record)
            .where(record.id == item_id, record.status == "validating")
            .values(status=status, info=info, error=error)
        )


def _inspect(record: type, item_id: str, sessions, store: ArtifactStore, examine, time_limit_s: int) -> str:
    try:
        return _inspect_once(record, item_id, sessions, store, examine, time_limit_s)
    finally:
        release_memory()  # the converted model and the loaded arrays must not stay under the next job


def _inspect_once(record: type, item_id: str, sessions, store: ArtifactStore, examine, time_limit_s: int) -> str:
    with sessions() as session:
        row = session.get(record, item_id)
        if row is None or row.status != "validating":
            return "skipped"
        key, filename = row.storage_key, row.filename
    with tempfile.TemporaryDirectory(prefix="shears-inspect-") as tmp:
        path = Path(tmp) / (Path(filename).suffix and f"upload{Path(filename).suffix}" or "upload")
        try:
            started = time.monotonic()
            store.get_file(key, path)
            info = examine(path, row)  # imports the engine too: all of it runs under the time limit
            if time.monotonic() - started > time_limit_s:  # the soft limit fired inside a library's `except`
                raise SoftTimeLimitExceeded()
        except Exception as error:  # noqa: BLE001 - any failure to read the upload makes it invalid
            code, message = getattr(error, "code", None) or "unreadable", str(error)
            if isinstance(error, SoftTimeLimitExceeded):
                code, message = (
                    "inspection-timeout",
                    (
                        f"Checking this file took longer than {time_limit_s} s (SHEARS_INSPECT_TIME_LIMIT_S); "
                        "upload a smaller model (fewer nodes) or ask the operator to raise the limit."
                    ),
                )
            log.info("%s %s invalid: %s", record.__tablename__, item_id, message)
            _finish(sessions, record, item_id, "invalid", error={"code": code, "message": message[:2000]})
            return "invalid"
    _finish(sessions, record, item_id, "ready", info=info)
    return "ready"


def inspect_model_upload(
    model_id: str, settings: Settings, sessions, store: ArtifactStore, ready: Callable[[], None] = lambda: None
) -> str:
    """``ready`` returns once the worker may import the engine (its warm-up is done)."""

    def examine(path: Path, row: ModelRecord) -> dict:
        ready()
        from worker.io.models import inspect_model, load_model

        loaded = load_model(path, architecture=row.architecture, allow_torchscript=settings.allow_torchscript_upload)
        return inspect_model(loaded.module, loaded.input_shape)

    return _inspect(ModelRecord, model_id, sessions, store, examine, settings.inspect_time_limit_s)


def inspect_dataset_upload(
    dataset_id: str, settings: Settings, sessions, store: ArtifactStore, ready: Callable[[], None] = lambda: None
) -> str:
    def examine(path: Path, row: DatasetRecord) -> dict:
        ready()
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

    return _inspect(DatasetRecord, dataset_id, sessions, store, examine, settings.inspect_time_limit_s)
