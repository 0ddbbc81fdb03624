"""Validation of uploads in a worker: load the model or dataset for real and record what it
is (``validating → ready | invalid``), so jobs only start from files the engine can read."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sqlalchemy import update

from service.core.config import Settings
from service.core.models import DatasetRecord, ModelRecord
from service.core.storage import ArtifactStore

log = logging.getLogger("shears.worker")


def _finish(sessions, record: type, item_id: str, status: str, info=None, error=None) -> None:
    with sessions.begin() as session:
        session.execute(update(record).where(record.id == item_id, record.status == "validating")
                        .values(status=status, info=info, error=error))  # fmt: skip


def _inspect(record: type, item_id: str, sessions, store: ArtifactStore, examine) -> str:
    with sessions() as session:
        row = session.get(record, item_id)
        if row is None or row.status != "validating":
            return "skipped"
        key, filename = row.storage_key, row.filename
    with tempfile.TemporaryDirectory(prefix="shears-inspect-") as tmp:
        path = Path(tmp) / (Path(filename).suffix and f"upload{Path(filename).suffix}" or "upload")
        store.get_file(key, path)
        try:
            info = examine(path, row)
        except Exception as error:  # noqa: BLE001 - any failure to read the upload makes it invalid
            code = getattr(error, "code", None) or "unreadable"
            log.info("%s %s invalid: %s", record.__tablename__, item_id, error)
            _finish(sessions, record, item_id, "invalid", error={"code": code, "message": str(error)[:2000]})
            return "invalid"
    _finish(sessions, record, item_id, "ready", info=info)
    return "ready"


def inspect_model_upload(model_id: str, settings: Settings, sessions, store: ArtifactStore) -> str:
    from worker.io.models import inspect_model, load_model

    def examine(path: Path, row: ModelRecord) -> dict:
        loaded = load_model(path, architecture=row.architecture, allow_torchscript=settings.allow_torchscript_upload)
        return inspect_model(loaded.module, loaded.input_shape)

    return _inspect(ModelRecord, model_id, sessions, store, examine)


def inspect_dataset_upload(dataset_id: str, settings: Settings, sessions, store: ArtifactStore) -> str:
    from worker.io.datasets import is_image_archive, load_dataset_file

    def examine(path: Path, row: DatasetRecord) -> dict:
        from service.core.intake.archives import check_image_archive

        limits = settings.archive_limits()
        index = check_image_archive(path, limits) if is_image_archive(path) else None
        data = load_dataset_file(path, max_bytes=settings.max_dataset_bytes, limits=limits)
        info = {"input_shape": list(data.input_shape), "num_classes": data.num_classes, "labelled": data.labelled,
                "train_samples": len(data.x_train), "val_samples": len(data.x_val)}  # fmt: skip
        if index is not None:
            info.update(format=f"image-{index.kind}", images=index.summary(),
                        note="input_shape is for the default preprocessing; jobs declare theirs in spec.preprocessing")  # fmt: skip
        return info

    return _inspect(DatasetRecord, dataset_id, sessions, store, examine)
