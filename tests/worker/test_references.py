"""Datasets registered by reference, inspected and read by the worker's code against moto's real S3 server."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from service.core import crud
from service.core.config import Settings
from service.core.intake import Rejected
from service.core.storage import open_store
from tests.images import image_folder, png_bytes
from worker.io.images import load_image_index
from worker.references import inspect_reference, open_reference


@pytest.fixture
def settings(tmp_path: Path, s3_endpoint: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
        s3_max_attempts=1,
        dataset_reference_prefixes=["s3://unused/"],
    )


@pytest.fixture
def bucket(s3_endpoint: str):
    """A new bucket of "user data" and a client to fill it."""
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    name = f"user-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name, client


def _put(bucket, prefix: str, members: list[tuple[str, bytes]]) -> str:
    name, client = bucket
    for key, data in members:
        client.put_object(Bucket=name, Key=prefix + key.removeprefix("data/"), Body=data)
    return f"s3://{name}/{prefix}"


def _row(uri: str):
    return crud.new_reference("t", uri, uri.rstrip("/").rsplit("/", 1)[-1])


def _code(call) -> str:
    with pytest.raises(Rejected) as refused:
        call()
    return refused.value.code


def test_a_prefix_of_class_folders_is_inspected_its_manifest_stored_and_read_lazily(settings, bucket, tmp_path) -> None:
    uri = _put(bucket, "pets/", image_folder(classes=2, per_class=5, size=8))
    row, store = _row(uri), open_store(settings)
    info, columns = inspect_reference(row, settings, store)
    assert info["labelled"] is True and info["images"]["classes"] == ["class0", "class1"]
    assert info["reference"] == {"uri": uri, "objects": 10, "bytes": columns["size_bytes"], "decoded": 10}
    manifest = json.loads(b"".join(store.iter_bytes(row.storage_key)))
    assert len(manifest["members"]) == 10 and all(len(m[2]) == 32 for m in manifest["members"])  # MD5 ETags
    assert len(columns["sha256"]) == 64

    row.status = "ready"
    path, images = open_reference(row, settings, store, tmp_path / "work")
    assert path is None and images.name == uri
    data = load_image_index(images.index, images.source)
    assert data.x_train[:].shape == (8, 3, 8, 8) and data.y_train.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    images.source.close()


def test_an_object_changed_or_deleted_after_registration_fails_the_read_with_a_named_code(
    settings, bucket, tmp_path
) -> None:
    uri = _put(bucket, "frames/", [(f"{i}.png", png_bytes(seed=i)) for i in range(4)])
    row, store = _row(uri), open_store(settings)
    inspect_reference(row, settings, store)
    row.status = "ready"
    uncached = settings.model_copy(update={"dataset_cache_bytes": 0})  # cached bytes are the snapshot's already
    _, images = open_reference(row, uncached, store, tmp_path / "work")
    data = load_image_index(images.index, images.source, val_fraction=0.25)
    name, client = bucket
    client.put_object(Bucket=name, Key="frames/0.png", Body=png_bytes(seed=99))  # new content, new ETag
    client.delete_object(Bucket=name, Key="frames/3.png")
    member_of = {m.name: i for i, m in enumerate(data.x_train.members)} | {
        m.name: ("val", i) for i, m in enumerate(data.x_val.members)
    }

    def read(name: str):
        where = member_of[name]
        return (lambda: data.x_val[where[1]]) if isinstance(where, tuple) else (lambda: data.x_train[where])

    assert _code(read("0.png")) == "input-changed"
    assert _code(read("3.png")) == "input-deleted"
    read("1.png")()  # the others still read
    images.source.close()


def test_the_job_cache_serves_later_epochs_and_stays_within_its_bound(settings, bucket, tmp_path) -> None:
    uri = _put(bucket, "frames/", [(f"{i}.png", png_bytes(seed=i)) for i in range(4)])
    row, store = _row(uri), open_store(settings)
    inspect_reference(row, settings, store)
    row.status = "ready"
    size = len(png_bytes(seed=0))
    for cache_bytes, survives in ((10 * size, True), (size // 2, False)):
        work = tmp_path / f"work-{cache_bytes}"
        _, images = open_reference(row, settings.model_copy(update={"dataset_cache_bytes": cache_bytes}), store, work)
        x = load_image_index(images.index, images.source, val_fraction=0.25).x_train
        first = x[:]  # every training image read once
        name, client = bucket
        for member in x.members:
            client.delete_object(Bucket=name, Key="frames/" + member.name)
        if survives:
            assert torch.equal(x[:], first)  # the second epoch reads the cache, not the bucket
        else:
            assert _code(lambda x=x: x[:]) == "input-deleted"
        assert sum(p.stat().st_size for p in (work / "dataset-cache").glob("*")) <= cache_bytes
        images.source.close()
        for i in range(4):  # restore for the next round
            client.put_object(Bucket=name, Key=f"frames/{i}.png", Body=png_bytes(seed=i))


@pytest.mark.parametrize(
    ("members", "limits", "code"),
    [
        ([(f"{i}.png", png_bytes(seed=i)) for i in range(4)], {"archive_max_members": 3}, "too-many-objects"),
        ([("a.png", png_bytes()), ("b.png", png_bytes(32, 32)[:90])], {}, "corrupt-image"),
        ([], {}, "no-images"),
        ([("a.png", png_bytes()), ("notes.txt", b"hello")], {}, "not-an-image"),
    ],
    ids=["too-many-objects", "corrupt-image", "empty-prefix", "not-an-image"],
)
def test_hostile_prefixes_make_the_inspection_fail_with_a_named_code(settings, bucket, members, limits, code) -> None:
    uri = _put(bucket, "data/", members)
    assert _code(lambda: inspect_reference(_row(uri), settings.model_copy(update=limits), open_store(settings))) == code


def test_a_single_npz_object_is_checked_like_an_upload_and_copied_for_the_job(settings, bucket, tmp_path) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.normal(size=(20, 4)).astype(np.float32), y=np.arange(20) % 2)
    uri = _put(bucket, "tables/", [("d.npz", buffer.getvalue())])[: -len("tables/")] + "tables/d.npz"
    row, store = _row(uri), open_store(settings)
    info, columns = inspect_reference(row, settings, store)
    assert (info["num_classes"], info["reference"]["objects"], columns["size_bytes"]) == (2, 1, len(buffer.getvalue()))
    row.status = "ready"
    (tmp_path / "work").mkdir()
    path, images = open_reference(row, settings, store, tmp_path / "work")
    assert images is None and path.read_bytes() == buffer.getvalue()


def test_a_missing_object_and_a_missing_bucket_are_named(settings, bucket) -> None:
    name, _ = bucket
    store = open_store(settings)
    assert _code(lambda: inspect_reference(_row(f"s3://{name}/gone.npz"), settings, store)) == "reference-not-found"
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/pets/"
    assert _code(lambda: inspect_reference(_row(missing), settings, store)) == "reference-unreadable"


def test_memory_while_reading_a_prefix_does_not_grow_with_the_dataset(settings, bucket, tmp_path) -> None:
    """Iterating a 4x larger prefix in batches (8 parallel GETs each, cached to disk) peaks at about the same memory."""
    import tracemalloc

    from tests.images import flat_folder

    peaks = []
    for count in (40, 160):
        uri = _put(bucket, f"set{count}/", [(n.removeprefix("images/"), d) for n, d in flat_folder(count, size=64)])
        row, store = _row(uri), open_store(settings)
        inspect_reference(row, settings, store)
        row.status = "ready"
        _, images = open_reference(row, settings, store, tmp_path / f"work{count}")
        x = load_image_index(images.index, images.source, val_fraction=0.1).x_train
        tracemalloc.start()
        for i in range(0, len(x), 8):
            x[i : i + 8]
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        images.source.close()
    full_split_bytes = 144 * 3 * 64 * 64 * 4  # what holding the larger train split would cost
    assert peaks[1] < 2 * peaks[0] and peaks[1] < full_split_bytes / 4


def test_a_job_that_starts_before_the_inspection_lists_the_prefix_itself_and_an_invalid_one_fails_named(
    settings, bucket, tmp_path
) -> None:
    from worker.execution import classify_failure
    from worker.references import DatasetInvalid

    uri = _put(bucket, "early/", image_folder(classes=2, per_class=3))
    row, store = _row(uri), open_store(settings)  # validating: no manifest stored yet
    _, images = open_reference(row, settings, store, tmp_path / "work")
    assert len(images.index.members) == 6 and images.index.classes == ["class0", "class1"]
    images.source.close()

    row.status, row.error = "invalid", {"code": "corrupt-image", "message": "image 'x.png' cannot be decoded"}
    with pytest.raises(DatasetInvalid) as failed:
        open_reference(row, settings, store, tmp_path / "work")
    assert classify_failure(failed.value, settings) == ("dataset-invalid", str(failed.value))
    assert "corrupt-image" in str(failed.value) and "register it again" in str(failed.value)
