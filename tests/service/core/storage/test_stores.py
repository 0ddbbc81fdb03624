"""Both artifact stores behave the same: file:// on disk, s3:// on moto's real S3 server."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest

from service.core.config import Settings
from service.core.storage import ArtifactNotFound, StorageError, StorageUnavailable, open_store
from tests.servers import free_port


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path: Path):
    if request.param == "file":
        return open_store(Settings(data_dir=tmp_path))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    settings = Settings(
        data_dir=tmp_path,
        storage_uri=f"s3://{bucket}/{tmp_path.name}",
        s3_endpoint_url=endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    return open_store(settings)


def test_a_stored_stream_reads_back_byte_for_byte(store, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 5000
    store.put_stream("jobs/j1/model.onnx", io.BytesIO(payload))
    assert store.exists("jobs/j1/model.onnx")
    assert store.size("jobs/j1/model.onnx") == len(payload)
    assert b"".join(store.iter_bytes("jobs/j1/model.onnx", chunk_size=4096)) == payload
    store.get_file("jobs/j1/model.onnx", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == payload


def test_deleting_a_prefix_removes_every_object_under_it_only(store) -> None:
    for name in ("jobs/a/x", "jobs/a/y", "jobs/b/x"):
        store.put_stream(name, io.BytesIO(b"1"))
    store.delete_prefix("jobs/a/")
    assert not store.exists("jobs/a/x") and not store.exists("jobs/a/y")
    assert store.exists("jobs/b/x")


def test_a_missing_object_raises_not_found(store, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound):
        store.size("nothing/here")
    with pytest.raises(ArtifactNotFound):
        b"".join(store.iter_bytes("nothing/here"))
    with pytest.raises(ArtifactNotFound):
        store.get_file("nothing/here", tmp_path / "copy")
    assert store.exists("nothing/here") is False


def test_the_store_reports_itself_healthy(store) -> None:
    store.check()


def test_s3_presigned_urls_download_the_object(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    settings = Settings(
        data_dir=tmp_path,
        storage_uri=f"s3://{s3_bucket}/presign",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    store = open_store(settings)
    store.put_stream("k", io.BytesIO(b"artifact"))
    url = store.presigned_url("k", expires_s=60)
    assert url.startswith(s3_endpoint) and "X-Amz-Signature" in url
    assert httpx.get(url).content == b"artifact"


def test_the_local_store_refuses_keys_that_escape_its_root(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path))
    with pytest.raises(ValueError):
        store.put_stream("../outside", io.BytesIO(b"x"))


def test_an_unknown_storage_scheme_is_refused_with_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file:// or s3://"):
        open_store(Settings(data_dir=tmp_path, storage_uri="ftp://host/x"))


def test_a_stored_file_survives_the_deletion_of_its_source_and_replaces_an_older_object(store, tmp_path: Path) -> None:
    source = tmp_path / "upload-tmp"
    source.write_bytes(b"old" * 1000)
    store.put_file("uploads/models/m1", source)
    source.unlink()
    source.write_bytes(b"new" * 2000)
    store.put_file("uploads/models/m1", source)
    source.unlink()  # the local store links the file on one filesystem: the object must outlive its source
    assert b"".join(store.iter_bytes("uploads/models/m1")) == b"new" * 2000


def test_s3_errors_reach_callers_as_our_storage_errors_not_botocore(tmp_path: Path, s3_endpoint: str) -> None:
    down = Settings(
        data_dir=tmp_path,
        storage_uri="s3://b/p",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_access_key_id="test",
        s3_secret_access_key="test",
        s3_max_attempts=1,
        s3_timeout_s=1,
    )
    source = tmp_path / "f"
    source.write_bytes(b"x")
    with pytest.raises(StorageUnavailable) as unreachable:
        open_store(down).put_file("k", source)
    assert "botocore" not in type(unreachable.value).__module__
    missing_bucket = Settings(
        data_dir=tmp_path,
        storage_uri="s3://no-such-bucket/p",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    with pytest.raises(StorageError):
        open_store(missing_bucket).put_file("k", source)
