"""Reading datasets that stay in the user's object storage (registered by reference).

Workers read them with their own S3 settings (``SHEARS_S3_*``; unset keys fall back to boto3's
credential chain). Every read of a listed object sends ``If-Match: <ETag from the listing>``,
so a job sees the snapshot the inspection recorded or fails with a named code:
``input-changed`` (S3 answers 412), ``input-deleted`` (404), ``reference-unreadable``
(access denied, no such bucket); outages stay ``StorageUnavailable`` (the job's
``storage-unavailable``). Nothing here writes to or deletes from the user's bucket.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from service.core.config import Settings
from service.core.intake.archives import ImageMember
from service.core.intake.errors import Rejected
from service.core.intake.references import ListedObject, Reference
from service.core.storage.base import ArtifactNotFound, StorageUnavailable
from service.core.storage.s3 import _client, _ours

_CHUNK = 1 << 20


def _uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"[:300]


@contextlib.contextmanager
def _reading(bucket: str, key: str, missing: str = "input-deleted") -> Iterator[None]:
    """S3 errors as our codes (see the module docstring); ``missing`` is the code of a 404."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
        if code in {"PreconditionFailed", "412"}:
            raise Rejected(
                "input-changed",
                f"{_uri(bucket, key)} changed since the dataset was registered (its ETag differs); "
                "register the dataset again to use the new data, or restore the object.",
            ) from error
        ours = _ours(error, key)
        if isinstance(ours, ArtifactNotFound):
            raise Rejected(
                missing,
                f"{_uri(bucket, key)} does not exist"
                + (
                    " any more; register the dataset again or restore the object."
                    if missing == "input-deleted"
                    else "."
                ),
            ) from error
        if isinstance(ours, StorageUnavailable):
            raise ours from error
        raise Rejected(
            "reference-unreadable",
            f"the workers cannot read {_uri(bucket, key)} (S3 answered {code or 'an error'}); grant the "
            "workers' credentials (SHEARS_S3_*) s3:ListBucket and s3:GetObject on it.",
        ) from error


class BucketReader:
    """Lists and reads objects of referenced datasets with the worker's S3 client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = _client(settings, settings.s3_endpoint_url)

    def list(self, reference: Reference) -> Iterator[ListedObject]:
        """Every object under the prefix, page by page (stop iterating to stop listing)."""
        with _reading(reference.bucket, reference.key, missing="reference-not-found"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=reference.bucket, Prefix=reference.key, PaginationConfig={"PageSize": 1000}
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield ListedObject(item["Key"], int(item["Size"]), item["ETag"].strip('"'))

    def head(self, reference: Reference) -> ListedObject:
        with _reading(reference.bucket, reference.key, missing="reference-not-found"):
            head = self.client.head_object(Bucket=reference.bucket, Key=reference.key)
        return ListedObject(reference.key, int(head["ContentLength"]), head["ETag"].strip('"'))

    def read(self, bucket: str, key: str, etag: str, size: int) -> bytes:
        """The object's bytes if it still has ``etag`` and ``size``."""
        with _reading(bucket, key):
            body = self.client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')["Body"]
            try:
                data = body.read(size + 1)
            finally:
                body.close()
        if len(data) != size:
            raise Rejected(
                "input-changed", f"{_uri(bucket, key)} holds {len(data)} bytes, not the {size} listed at registration."
            )
        return data

    def download(self, bucket: str, key: str, etag: str, size: int, path: Path) -> None:
        """Copy the object to ``path`` in chunks if it still has ``etag`` and ``size``."""
        written = 0
        with _reading(bucket, key):
            body = self.client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')["Body"]
            try:
                with open(path, "wb") as out:
                    for chunk in body.iter_chunks(_CHUNK):
                        written += len(chunk)
                        if written > size:
                            break
                        out.write(chunk)
            finally:
                body.close()
        if written != size:
            raise Rejected("input-changed", f"{_uri(bucket, key)} no longer holds the {size} bytes listed.")


class PrefixObjects:
    """Member bytes of a referenced prefix for ``LazyImages``: read with ``If-Match`` their
    listed ETag, in parallel for a batch, through an optional disk cache of at most
    ``cache_bytes`` (files named by key and ETag; filled until full, never evicted)."""

    def __init__(
        self, settings: Settings, reference: Reference, cache_dir: Path | None = None, cache_bytes: int = 0
    ) -> None:
        self.settings, self.reference = settings, reference
        self.cache_dir, self.cache_bytes = cache_dir, cache_bytes if cache_dir is not None else 0
        self._reader: BucketReader | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._cached = 0
        self._lock = threading.Lock()

    def _bucket(self) -> BucketReader:
        if self._reader is None:
            self._reader = BucketReader(self.settings)
        return self._reader

    def _cache_path(self, member: ImageMember) -> Path:
        digest = hashlib.sha256(f"{member.name}\0{member.etag}".encode()).hexdigest()
        return self.cache_dir / digest  # type: ignore[operator]

    def read(self, member: ImageMember) -> bytes:
        if self.cache_bytes:
            cached = self._cache_path(member)
            with contextlib.suppress(FileNotFoundError):
                data = cached.read_bytes()
                if len(data) == member.size:
                    return data
        data = self._bucket().read(self.reference.bucket, self.reference.key + member.name, member.etag, member.size)
        if self.cache_bytes:
            self._remember(member, data)
        return data

    def _remember(self, member: ImageMember, data: bytes) -> None:
        with self._lock:
            if self._cached + len(data) > self.cache_bytes:
                return
            self._cached += len(data)
        self.cache_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".part-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, self._cache_path(member))

    def read_many(self, members: Sequence[ImageMember]) -> list[bytes]:
        """A batch's bytes, fetched by up to 8 threads (object storage answers in tens of ms)."""
        if len(members) < 2:
            return [self.read(m) for m in members]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="shears-s3-read")
        return list(self._pool.map(self.read, members))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __getstate__(self) -> dict:  # DataLoader workers make their own client and pool
        return {
            "settings": self.settings,
            "reference": self.reference,
            "cache_dir": self.cache_dir,
            "cache_bytes": 0,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
