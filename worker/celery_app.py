"""Celery worker entry point: ``celery -A worker.celery_app worker``."""

from __future__ import annotations

import logging
import os
import resource
import threading

from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown

from service.core.config import get_settings
from service.core.queue import make_celery
from service.core.workers import Heartbeat

log = logging.getLogger("shears.worker")
settings = get_settings()
app = make_celery(settings)
app.conf.include = ["worker.tasks"]
_heartbeat: Heartbeat | None = None


@celeryd_after_setup.connect
def _consume_inspections(sender, instance, **_) -> None:
    """Every worker also takes upload inspections from their own queue (whatever ``--queues``
    says). Celery's consumer takes from its queues in turn, so an inspection backlog delays a
    job by at most one inspection (each bounded by ``inspect_time_limit_s``)."""
    instance.app.amqp.queues.select_add(settings.inspect_queue)


@worker_ready.connect
def _start_heartbeat(sender, **_) -> None:
    """Beat from the main process: it stops when the worker dies, whatever kills it."""
    global _heartbeat
    _heartbeat = Heartbeat(settings, sender.hostname, os.getpid())
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@worker_process_init.connect
def _limit_memory(**_) -> None:
    """Cap each pool process's address space, so a job that needs too much memory fails with
    MemoryError (reported as `out-of-memory`) instead of the kernel killing the worker."""
    if settings.worker_memory_limit_mb:
        limit = settings.worker_memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


engine_imported = threading.Event()
"""Set once the warm-up thread is done (or was never started). Tasks wait for it: importing
torch from two threads at once can fail ("Only a single TORCH_LIBRARY can be used to register
the namespace prims"), which made a job that arrived during the warm-up fail `internal-error`."""
engine_imported.set()  # pools that fire no worker_process_init (solo, threads) warm nothing


def wait_for_engine_imports() -> None:
    engine_imported.wait()


def _import_engine() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401  (the report's plots)
        import matplotlib.figure  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter imports it on the first export)
        import sklearn.datasets  # noqa: F401  (the built-in `digits` dataset)
        import torch._dynamo  # noqa: F401  (the first optimizer a job creates imports it: ~1.3 s)

        import worker.execution  # noqa: F401
        import worker.export  # noqa: F401  (onnx, onnxruntime)
        import worker.io.models  # noqa: F401  (onnx2torch)
        import worker.pipeline  # noqa: F401  (torch)
        import worker.pruning.channels  # noqa: F401  (torch-pruning)
        import worker.report  # noqa: F401

        log.info("engine imports warm")
    except Exception:  # noqa: BLE001 - the task imports them again and reports the error on the job
        log.warning("warming the engine imports failed", exc_info=True)
    finally:
        engine_imported.set()


@worker_process_init.connect
def _warm_engine_imports(**_) -> None:
    """Import the engine (torch, onnx, onnxruntime, torch-pruning: seconds of CPU) as soon as
    a pool process starts, so that the first job does not pay for it (bench/api_queue.py).
    In a background thread: worker_process_init must return within Celery's
    worker_proc_alive_timeout (4 s); a task that arrives meanwhile waits for it to finish
    (``wait_for_engine_imports``)."""
    if settings.worker_warm_imports:
        engine_imported.clear()
        threading.Thread(target=_import_engine, name="warm-engine-imports", daemon=True).start()
    else:
        engine_imported.set()
