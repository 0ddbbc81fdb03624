"""CheckpointMirror: the training loop's checkpoint directory kept in step with the artifact store."""

from __future__ import annotations

import json
from pathlib import Path

from service.core.storage.local import LocalArtifactStore
from worker.checkpoints import MANIFEST, CheckpointMirror, checkpoint_prefix


def _store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore((tmp_path / "store").as_uri())


def _stored(store: LocalArtifactStore, job_id: str) -> set[str]:
    folder = store.root / checkpoint_prefix(job_id)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_an_epoch_event_uploads_the_changed_checkpoints_and_a_manifest_naming_the_epoch(tmp_path: Path) -> None:
    store = _store(tmp_path)
    mirror = CheckpointMirror(store, "job-1", tmp_path / "host-a", attempt=1)
    assert mirror.restore() is None  # nothing stored yet: a fresh start
    (tmp_path / "host-a" / "0-finetune.pt").write_bytes(b"epoch-1")
    (tmp_path / "host-a" / "0-finetune.pt.tmp").write_bytes(b"half written")
    mirror.after_epoch({"stage": "finetune"})  # a stage start: no epoch, nothing uploaded
    assert _stored(store, "job-1") == set()
    mirror.after_epoch({"stage": "0-finetune", "epoch": 1, "epochs": 3})
    assert _stored(store, "job-1") == {"0-finetune.pt", MANIFEST}
    manifest = json.loads((store.root / checkpoint_prefix("job-1") / MANIFEST).read_text())
    assert manifest == {"files": ["0-finetune.pt"], "stage": "0-finetune", "epoch": 1, "attempt": 1}


def test_the_last_epoch_replaces_the_stored_checkpoint_and_another_host_restores_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = CheckpointMirror(store, "job-2", tmp_path / "host-a", attempt=1)
    first.restore()
    for epoch in (1, 2):
        (tmp_path / "host-a" / "0-finetune.pt").write_bytes(f"epoch-{epoch}".encode() * (epoch + 1))
        first.after_epoch({"stage": "0-finetune", "epoch": epoch})
    (tmp_path / "host-b").mkdir()
    (tmp_path / "host-b" / "stale.pt").write_bytes(b"from an older job")
    second = CheckpointMirror(store, "job-2", tmp_path / "host-b", attempt=2)
    assert second.restore() == {"stage": "0-finetune", "epoch": 2, "attempt": 1}
    assert {p.name for p in (tmp_path / "host-b").iterdir()} == {"0-finetune.pt"}
    assert (tmp_path / "host-b" / "0-finetune.pt").read_bytes() == b"epoch-2" * 3
    assert second.resumed_from["epoch"] == 2


def test_an_execution_that_lost_the_job_writes_no_checkpoint(tmp_path: Path) -> None:
    store = _store(tmp_path)
    mirror = CheckpointMirror(store, "job-3", tmp_path / "host-a", attempt=1, may_write=lambda: False)
    mirror.restore()
    (tmp_path / "host-a" / "0-finetune.pt").write_bytes(b"epoch-1")
    mirror.after_epoch({"stage": "0-finetune", "epoch": 1})
    assert _stored(store, "job-3") == set()


def test_discard_removes_the_stored_and_the_local_checkpoints(tmp_path: Path) -> None:
    store = _store(tmp_path)
    mirror = CheckpointMirror(store, "job-4", tmp_path / "host-a", attempt=1)
    mirror.restore()
    (tmp_path / "host-a" / "0-finetune.pt").write_bytes(b"epoch-1")
    mirror.after_epoch({"stage": "0-finetune", "epoch": 1})
    mirror.discard()
    assert _stored(store, "job-4") == set()
    assert not (tmp_path / "host-a").exists()
