"""Worker liveness: each ``celery worker`` writes a heartbeat row; readiness reads them.

A database row works the same with every broker (kombu's ``filesystem://`` has no remote
control replies worth waiting for, and a Celery ``ping`` costs a broadcast and a timeout per
probe), and a readiness probe costs one indexed ``SELECT``. A worker killed with SIGKILL
stops beating; after ``worker_stale_s`` /readyz says so.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import Engine, create_engine, delete, func, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from service.core.config import Settings
from service.core.db import create_schema
from service.core.models import WorkerHeartbeat, utcnow

log = logging.getLogger("shears.worker")


class NoLiveWorker(RuntimeError):
    """No worker has written a heartbeat recently."""


def beat(engine: Engine, hostname: str, pid: int) -> None:
    """Record that ``hostname`` is alive now."""
    with Session(engine) as session, session.begin():
        row = session.get(WorkerHeartbeat, hostname)
        if row is None:
            session.add(WorkerHeartbeat(hostname=hostname, pid=pid, beat_at=utcnow()))
        else:
            row.pid, row.beat_at = pid, utcnow()


def forget(engine: Engine, hostname: str) -> None:
    """Remove ``hostname``'s row (a clean shutdown)."""
    with Session(engine) as session, session.begin():
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.hostname == hostname))


def check_workers(engine: Engine, stale_s: float) -> int:
    """The number of live workers; raise ``NoLiveWorker`` when there is none."""
    cutoff = utcnow() - timedelta(seconds=stale_s)
    with Session(engine) as session:
        live = session.scalar(select(func.count()).select_from(WorkerHeartbeat).where(WorkerHeartbeat.beat_at > cutoff))
    if not live:
        raise NoLiveWorker(
            f"no live worker: none has sent a heartbeat in the last {stale_s:g} s; jobs and uploads wait "
            "until one runs (`celery -A worker.celery_app worker`)"
        )
    return live


class Heartbeat:
    """A daemon thread in the worker's main process that beats every ``worker_heartbeat_s``.

    It uses its own connection-per-beat engine (``NullPool``), so pool processes forked later
    share no open database connection with it."""

    def __init__(self, settings: Settings, hostname: str, pid: int) -> None:
        self.settings, self.hostname, self.pid = settings, hostname, pid
        url = settings.resolved_database_url
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shears-heartbeat", daemon=True)

    def start(self) -> None:
        create_schema(self.engine)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                beat(self.engine, self.hostname, self.pid)
            except Exception:  # noqa: BLE001 - a database blip: readiness turns stale, then recovers
                log.warning("worker heartbeat failed", exc_info=True)
            if self._stop.wait(self.settings.worker_heartbeat_s):  # the period of a periodic beat
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            forget(self.engine, self.hostname)
        except Exception:  # noqa: BLE001 - the row then goes stale on its own
            log.warning("could not remove the worker heartbeat", exc_info=True)
        self.engine.dispose()
