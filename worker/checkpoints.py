"""Training checkpoints mirrored to the artifact store, so a job resumes on any worker host.

The training loop (worker.pruning.training) saves ``<stage>.pt`` into a local directory at every
epoch boundary and then reports the epoch. :class:`CheckpointMirror` sits between that report
and the job's progress: it uploads every checkpoint file that changed to
``jobs/{id}/checkpoints/<file>`` (one object per stage, overwritten each epoch: the last one
is kept), then ``manifest.json`` naming the files and the epoch they reached. A job row that
shows epoch *k* therefore always has the epoch-*k* checkpoint in storage.

Before a run, :meth:`CheckpointMirror.restore` replaces the local directory with what the
store holds, whichever host wrote it; the loop then resumes from those files as from its own.
When the job ends (succeeded, failed or cancelled) :meth:`CheckpointMirror.discard` removes
the objects; a worker that dies before it could is covered by the task's redelivery, which
finds the job ended and discards them then (worker.execution). Knows files and keys only: no torch, no job rows.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from service.core.storage import ArtifactStore
from service.core.storage.base import ArtifactNotFound

log = logging.getLogger("shears.worker")
MANIFEST = "manifest.json"


def checkpoint_prefix(job_id: str) -> str:
    """Where a job's checkpoints live in the artifact store."""
    return f"jobs/{job_id}/checkpoints/"


class CheckpointMirror:
    """Keeps ``local_dir`` (the training loop's checkpoint directory) and the store in step.

    ``may_write`` is asked before every upload: an execution that lost the job's lease must
    not overwrite the checkpoints of the one that now holds it.
    """

    def __init__(
        self,
        store: ArtifactStore,
        job_id: str,
        local_dir: Path,
        attempt: int,
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store, self.local_dir, self.attempt, self.may_write = store, Path(local_dir), attempt, may_write
        self.prefix = checkpoint_prefix(job_id)
        self.resumed_from: dict | None = None
        self._uploaded: dict[str, tuple[int, int]] = {}  # file name -> (mtime_ns, size) last uploaded

    def restore(self) -> dict | None:
        """Replace the local checkpoints with the stored ones; return where they stopped
        (``{"stage", "epoch", "attempt"}`` of the last stored epoch), or None for a fresh start."""
        shutil.rmtree(self.local_dir, ignore_errors=True)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        try:
            manifest = json.loads(b"".join(self.store.iter_bytes(self.prefix + MANIFEST)))
        except ArtifactNotFound:
            return None
        for name in manifest["files"]:
            self.store.get_file(self.prefix + name, self.local_dir / name)
            self._uploaded[name] = _signature(self.local_dir / name)
        self.resumed_from = {"stage": manifest["stage"], "epoch": manifest["epoch"], "attempt": manifest["attempt"]}
        log.info(
            "checkpoints restored from %s: stage %s, epoch %s (attempt %s)",
            self.prefix,
            manifest["stage"],
            manifest["epoch"],
            manifest["attempt"],
        )
        return self.resumed_from

    def after_epoch(self, event: dict) -> None:
        """Upload the checkpoints the loop saved for the epoch of ``event`` (a progress event);
        other events (stage starts) pass through."""
        if "epoch" not in event or not self.local_dir.is_dir() or not self.may_write():
            return
        files = sorted(p.name for p in self.local_dir.iterdir() if p.is_file() and p.suffix == ".pt")
        changed = [name for name in files if self._uploaded.get(name) != _signature(self.local_dir / name)]
        if not changed:
            return
        for name in changed:  # a storage error ends the job like any other (storage-unavailable)
            signature = _signature(self.local_dir / name)
            self.store.put_file(self.prefix + name, self.local_dir / name)
            self._uploaded[name] = signature
        manifest = {"files": files, "stage": event.get("stage"), "epoch": event["epoch"], "attempt": self.attempt}
        with tempfile.SpooledTemporaryFile() as stream:
            stream.write(json.dumps(manifest).encode())
            stream.seek(0)
            self.store.put_stream(self.prefix + MANIFEST, stream)

    def discard(self) -> None:
        """Remove the stored checkpoints (the job ended) and the local copies."""
        discard_checkpoints(self.store, self.prefix, self.local_dir)


def discard_checkpoints(store: ArtifactStore, prefix: str, local_dir: Path) -> None:
    """Remove the checkpoints stored under ``prefix`` and their local copies in ``local_dir``."""
    shutil.rmtree(local_dir, ignore_errors=True)
    try:
        store.delete_prefix(prefix)
    except Exception:  # noqa: BLE001 - storage down: stale checkpoints only cost space
        log.warning("could not remove the checkpoints under %s", prefix, exc_info=True)


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size
