"""Response bodies of the API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.core.contracts import JobProgress, JobResult
from service.core.spec import JobSpec


def _as_utc(value: datetime) -> datetime:
    """RFC 3339 in UTC (``…Z``): SQLite hands back naive datetimes (stored as UTC), PostgreSQL
    aware ones in the session's time zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]
"""Every timestamp the API answers with: serialized as ``2026-11-30T03:00:02.567623Z``."""


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UploadError(BaseModel):
    code: str
    message: str


class UploadOut(Out):
    id: str
    filename: str
    status: str  # validating | ready | invalid
    error: UploadError | None = None
    sha256: str
    size_bytes: int
    info: dict | None = None
    created_at: UtcDateTime


class ModelOut(UploadOut):
    format: str | None = None
    architecture: str | None = None


class DatasetOut(UploadOut):
    source_uri: str | None = Field(
        None,
        description="Set when the dataset was registered by reference: the data stay there, and `sha256` is "
        "the digest of the manifest (every key with its ETag and size) the inspection recorded.",
    )


class DatasetReference(BaseModel):
    """Register a dataset where it lives instead of uploading it (POST /v1/datasets as JSON)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"uri": "s3://datasets/pets/"}]})

    uri: str = Field(
        min_length=1,
        max_length=1100,
        description="`s3://bucket/prefix/` (a folder of images: class folders are labelled, a flat folder is "
        "unlabelled, `train/` + `val/` give the split) or `s3://bucket/key` of one `.npz`, `.safetensors`, "
        "`.zip` or `.tar`; under a prefix the operator allows (SHEARS_DATASET_REFERENCE_PREFIXES).",
    )


class ModelList(BaseModel):
    items: list[ModelOut]


class DatasetList(BaseModel):
    items: list[DatasetOut]


class JobError(BaseModel):
    code: str
    message: str
    stage: str | None = None


class Artifact(BaseModel):
    name: str
    size_bytes: int
    sha256: str
    media_type: str


class JobOut(Out):
    id: str
    status: str
    stage: str | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    attempt: int
    model_id: str
    dataset_id: str | None = None
    spec: JobSpec
    error: JobError | None = None
    result: JobResult | None = None
    artifacts: list[Artifact]
    created_at: UtcDateTime
    started_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = None
