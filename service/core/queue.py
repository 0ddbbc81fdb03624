"""The Celery application shared by the API (which only sends tasks, by name) and workers."""

from __future__ import annotations

from celery import Celery

from service.core.config import Settings

# Task names: the API sends these without importing worker code (it never imports torch).
PING_TASK = "shears.ping"
RUN_JOB_TASK = "shears.run_job"
INSPECT_MODEL_TASK = "shears.inspect_model"
INSPECT_DATASET_TASK = "shears.inspect_dataset"


def make_celery(settings: Settings) -> Celery:
    """A Celery app wired to the configured broker, with the job-system defaults."""
    app = Celery("shears", broker=settings.resolved_broker_url, backend=settings.result_backend)
    transport_options: dict = {}
    if settings.uses_filesystem_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
        }
    elif settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        restore_interval = min(10.0, max(1.0, settings.broker_visibility_timeout_s / 4))
        transport_options = {
            # An unacknowledged task (acks_late) goes back to the queue after this long; the
            # job's compare-and-set claim refuses the second delivery while the first runs.
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # Sweep for such tasks every min(visibility/2, ~100 s) (kombu scans every
            # interval * throttle seconds).
            "unacked_restore_interval": restore_interval,
            "unacked_restore_throttle": max(
                1, int(min(settings.broker_visibility_timeout_s / 2, 100) / restore_interval)
            ),
            # Fail fast instead of hanging a request on a dead or frozen broker.
            "socket_connect_timeout": settings.broker_timeout_s,
            "socket_timeout": max(settings.broker_timeout_s, 2.0),
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        }
        app.conf.update(
            redis_socket_connect_timeout=settings.broker_timeout_s,
            redis_socket_timeout=max(settings.broker_timeout_s, 2.0),
        )
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_timeout=settings.broker_timeout_s,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.task_queue,
        # Upload inspections have their own queue: a backlog of uploads never sits in front of jobs.
        task_routes={name: {"queue": settings.inspect_queue} for name in (INSPECT_MODEL_TASK, INSPECT_DATASET_TASK)},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=3600,
        worker_hijack_root_logger=False,
    )
    return app


def check_broker(app: Celery) -> None:
    """Raise when the broker cannot be reached."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def send(app: Celery, task: str, object_id: str, **options) -> None:
    """Send a task by name with only an id (the row is the truth); fails fast when the
    broker is unreachable instead of retrying for minutes inside a request."""
    app.send_task(task, args=[object_id], retry=False, **options)
