"""All configuration of Shears, in one pydantic-settings class.

Every value can be set with an environment variable named ``SHEARS_<FIELD>`` (for example
``SHEARS_DATABASE_URL``). The defaults are the *embedded* deployment: one machine, no servers
to install — SQLite, a local artifact directory and kombu's filesystem broker, all under
``data_dir``. Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration shared by the API, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="SHEARS_", extra="ignore")

    data_dir: Path = Field(Path(".shears-data"), description="Root of every embedded default.")
    host: str = "127.0.0.1"
    port: int = 8000

    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    broker_url: str | None = Field(None, description="Celery broker; default kombu filesystem://.")
    result_backend: str | None = Field(
        None, description="Celery result backend; unused by jobs (the job row is the truth)."
    )
    storage_uri: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default a directory in data_dir."
    )
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint clients reach; presigned URLs are signed for it."
    )
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None

    task_queue: str = "shears"
    inspect_queue: str = Field(
        "shears-inspect",
        description="Celery queue of upload inspections. Every worker also consumes it; Celery takes "
        "from its queues in turn, so a backlog of uploads delays a job by at most one inspection.",
    )
    inspect_time_limit_s: int = Field(
        300, ge=5, description="An inspection running longer fails the upload `invalid`/`inspection-timeout`."
    )
    dispatch_window: int = Field(
        2,
        ge=1,
        description="Jobs sent to the broker and not yet started, across all tenants. Further jobs wait "
        "in the database; the reaper sends the next one from the tenant with the fewest active jobs "
        "(oldest first), so one tenant's backlog cannot starve another tenant's first job. Set it "
        "to about the number of worker slots.",
    )
    worker_heartbeat_s: float = Field(5.0, gt=0, description="How often each worker records that it is alive.")
    worker_stale_s: float = Field(
        20.0, gt=0, description="/readyz answers 503 `no live worker` when no worker beat for this long."
    )
    worker_restart_max_backoff_s: float = Field(
        60.0, gt=0, description="`shears up`: the longest wait before restarting a dead worker (doubling from 1 s)."
    )
    worker_concurrency: int = 1
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]' for the pruning engine.")
    allow_torchscript_upload: bool = Field(
        False, description="Loading TorchScript runs code from the file: operator opt-in only."
    )

    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 hex digest of an API key -> tenant (`shears hash-key KEY` prints one).",
    )
    max_upload_bytes: int = Field(2 << 30, ge=1, description="Largest model or dataset upload.")
    max_dataset_bytes: int = Field(
        4 << 30,
        ge=1,
        description="Largest dataset in worker memory (features as float32, labels as int64), "
        "computed from the file's headers at upload; larger ones get 422 `too-large`.",
    )
    database_pool_size: int = Field(
        20, ge=1, description="Database connections each process keeps open (SQLAlchemy pool_size)."
    )
    database_max_overflow: int = Field(
        0,
        ge=0,
        description="Extra connections above the pool size, closed after each use. Overflow churn "
        "(a new PostgreSQL backend per request) costs more than waiting for a pooled connection.",
    )
    lease_s: float = Field(120.0, gt=0, description="A running job without a heartbeat this long is lost.")
    max_attempts: int = Field(3, ge=1, description="Executions of a job before `worker-lost`.")
    reaper_interval_s: float = Field(5.0, gt=0, description="How often the API re-queues lost jobs.")
    dispatch_retry_s: float = Field(30.0, gt=0, description="Re-send a queued job not started after this.")
    progress_interval_s: float = Field(1.0, ge=0, description="Minimum time between progress writes.")
    broker_visibility_timeout_s: float = Field(
        12 * 3600.0,
        gt=0,
        description="Redis broker: an unacknowledged task is handed to another worker after this. "
        "Keep it above the longest job (time_limit_s); a second delivery is refused by the job's "
        "compare-and-set claim while the lease is renewed, but it costs a worker slot.",
    )
    broker_timeout_s: float = Field(
        3.0, gt=0, description="Connect/read timeout of broker sockets: a POST never hangs on a dead broker."
    )
    s3_timeout_s: float = Field(30.0, gt=0, description="Connect and read timeout of S3 requests.")
    s3_max_attempts: int = Field(5, ge=1, description="S3 attempts (exponential backoff) before storage-unavailable.")
    worker_warm_imports: bool = Field(
        True, description="Workers import the engine (torch, onnx) when they start, not on the first job."
    )
    worker_memory_limit_mb: int | None = Field(
        None,
        ge=64,
        description="Address-space limit (RLIMIT_AS) of each worker child; a job over it fails "
        "`out-of-memory` and the worker keeps serving. Unset: no limit (the kernel's OOM killer decides).",
    )
    webhook_secret: str | None = Field(None, description="HMAC-SHA256 key of completion webhooks.")
    allow_private_callbacks: bool = Field(
        False, description="Allow webhooks to loopback, link-local and private addresses."
    )
    presign_expires_s: int = Field(900, ge=1, le=7 * 24 * 3600)
    archive_max_members: int = Field(50_000, ge=1, description="Most members an image-archive dataset may hold.")
    archive_max_member_bytes: int = Field(64 << 20, ge=1, description="Largest image inside an archive.")
    archive_max_total_bytes: int = Field(16 << 30, ge=1, description="Largest expanded size of an image archive.")
    archive_max_ratio: int = Field(200, ge=1, description="Largest compression ratio of a zip member (zip bombs).")
    image_max_pixels: int = Field(40_000_000, ge=1, description="Largest image (width x height) decoded.")
    dataset_reference_prefixes: list[str] = Field(
        default_factory=list,
        description="Object-storage prefixes (`s3://bucket/prefix/`) under which datasets may be registered by "
        'reference (POST /v1/datasets with `{"uri": ...}`) instead of uploaded; workers read them with their '
        "own S3 settings (SHEARS_S3_*). Empty: registering by reference is off.",
    )
    dataset_reference_sample: int = Field(
        64, ge=1, description="Images of a referenced prefix that the inspection decodes (spread over the listing)."
    )
    dataset_reference_max_object_bytes: int = Field(
        16 << 30, ge=1, description="Largest single object (.npz, .safetensors, .zip, .tar) registered by reference."
    )
    dataset_cache_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Local disk a job may fill with images of a referenced prefix (keyed by key and ETag), "
        "so later epochs do not fetch them again; 0: always read from the bucket.",
    )

    def archive_limits(self):
        """The image-archive bounds as the (torch-free) checker takes them."""
        from service.core.intake.archives import ArchiveLimits

        return ArchiveLimits(
            max_members=self.archive_max_members,
            max_member_bytes=self.archive_max_member_bytes,
            max_total_bytes=self.archive_max_total_bytes,
            max_ratio=self.archive_max_ratio,
            max_pixels=self.image_max_pixels,
        )

    # Limits at the edge (service/edge.py; docs/RELIABILITY.md "Limits"). They bound what one
    # client can hold: memory, file descriptors, worker slots and temporary disk.
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Request line plus headers; larger answers 431 and the connection closes."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time to send the request line and headers; slower answers 408 and closes."
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest pause between two pieces of a request body (also a Content-Length larger "
        "than the body sent); then 408 and the connection closes.",
    )
    max_connections: int = Field(
        1000, ge=1, description="Open connections per API process; more are answered 503 and closed at once."
    )
    keep_alive_s: int = Field(
        30, ge=1, description="Idle keep-alive connections close after this (above HTTP clients' idle expiry)."
    )
    receive_buffer_bytes: int = Field(
        1 << 20,
        ge=64 << 10,
        le=64 << 20,
        description="Request body bytes a connection buffers before reading from its socket pauses "
        "(uvicorn's own is 64 KiB); larger pieces make large uploads cheaper for the event loop.",
    )
    max_uploads_per_tenant: int = Field(
        4, ge=1, description="Uploads one tenant may stream at once per API process; more answer 429."
    )
    max_temp_bytes: int = Field(
        8 << 30,
        ge=1 << 20,
        description="Temporary upload files of all requests together per API process; an upload that "
        "would pass it answers 503 with Retry-After.",
    )
    rate_limit_per_s: float = Field(
        50.0, gt=0, description="Sustained requests per second per API key (token bucket); more answer 429."
    )
    rate_limit_burst: int = Field(200, ge=1, description="Requests per API key allowed in a burst above the rate.")

    @field_validator("dataset_reference_prefixes")
    @classmethod
    def _reference_prefixes(cls, value: list[str]) -> list[str]:
        """Each entry is ``s3://bucket/`` or ``s3://bucket/prefix/`` (a trailing ``/`` is added)."""
        from service.core.intake.references import normalise_allowed_prefix

        return [normalise_allowed_prefix(entry) for entry in value]

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'shears.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_storage_uri(self) -> str:
        return self.storage_uri or (self.data_dir / "artifacts").as_uri()

    @property
    def broker_folder(self) -> Path:
        """Where kombu's filesystem transport keeps messages and remote-control mailboxes."""
        return self.data_dir / "broker"

    def as_env(self) -> dict[str, str]:
        """``SHEARS_*`` variables that hand these settings to a child process."""
        return {
            f"SHEARS_{name.upper()}": json.dumps(value) if isinstance(value, dict | list) else str(value)
            for name, value in self.model_dump(mode="json", exclude_none=True).items()
        }

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")


def get_settings() -> Settings:
    """Settings read from the environment (a new object each call; cheap)."""
    return Settings()


class ClientSettings(BaseSettings):
    """What the ``shears`` client commands read: ``SHEARS_URL`` and ``SHEARS_API_KEY``."""

    model_config = SettingsConfigDict(env_prefix="SHEARS_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
