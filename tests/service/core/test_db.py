"""The schema: a database made by an older version gains the nullable columns newer ones declare."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text

from service.core.config import Settings
from service.core.db import create_schema, make_engine, make_session_factory
from service.core.models import DatasetRecord

OLD_DATASETS = """CREATE TABLE datasets (
    tenant VARCHAR(64) NOT NULL, filename VARCHAR(255) NOT NULL, status VARCHAR(16) NOT NULL, error JSON,
    sha256 VARCHAR(64) NOT NULL, size_bytes BIGINT NOT NULL, storage_key VARCHAR(255) NOT NULL, info JSON,
    created_at DATETIME NOT NULL, id VARCHAR(32) NOT NULL PRIMARY KEY)"""


def test_a_datasets_table_of_an_older_version_gains_source_uri_and_keeps_its_rows(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    with engine.begin() as connection:
        connection.execute(text(OLD_DATASETS))
        connection.execute(
            text(
                "INSERT INTO datasets VALUES ('t', 'd.npz', 'ready', NULL, 'ab', 1, 'uploads/datasets/ds_1', "
                "NULL, '2026-01-01 00:00:00', 'ds_1')"
            )
        )
    create_schema(engine)
    create_schema(engine)  # idempotent
    assert "source_uri" in {c["name"] for c in inspect(engine).get_columns("datasets")}
    with make_session_factory(engine)() as session:
        old = session.get(DatasetRecord, "ds_1")
        assert (old.filename, old.source_uri) == ("d.npz", None)
