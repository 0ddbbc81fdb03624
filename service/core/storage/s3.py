"""``s3://bucket/prefix`` artifact store over boto3 (AWS S3, MinIO, moto's server)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.core.config import Settings
from service.core.storage.base import ArtifactNotFound, StorageError, StorageUnavailable

# Multipart above 16 MiB; S3 writes are atomic per object, so readers never see a partial one.
_TRANSFER = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20)


def _client(settings: Settings, endpoint: str | None):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(
            retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},  # exponential backoff
            connect_timeout=settings.s3_timeout_s,
            read_timeout=settings.s3_timeout_s,
            signature_version="s3v4",
        ),
    )


class S3ArtifactStore:
    """Objects live in ``bucket`` under ``prefix``."""

    def __init__(self, uri: str, settings: Settings) -> None:
        parsed = urlparse(uri)
        self.uri = uri
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = _client(settings, settings.s3_endpoint_url)
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self.public_client = _client(settings, public)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        with _translated(key):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=_TRANSFER)

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        with _translated(key):
            self.client.upload_fileobj(stream, self.bucket, self._key(key), Config=_TRANSFER)

    def get_file(self, key: str, path: Path) -> None:
        with _translated(key):
            self.client.download_file(self.bucket, self._key(key), str(path))

    def iter_bytes(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with _translated(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            with _translated(key):
                yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ArtifactNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        with _translated(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def delete_prefix(self, prefix: str) -> None:
        with _translated(prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if objects:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    def presigned_url(self, key: str, expires_s: int = 900) -> str | None:
        with _translated(key):
            return self.public_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
            )

    def check(self) -> None:
        with _translated(""):
            self.client.head_bucket(Bucket=self.bucket)


_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """botocore/boto3 errors become ours (callers never import botocore): a missing object
    ``ArtifactNotFound``, unreachable/5xx/throttled ``StorageUnavailable``, others ``StorageError``."""
    try:
        yield
    except (ClientError, BotoCoreError, S3UploadFailedError, S3TransferFailedError) as error:
        raise _ours(error, key) from error


def _ours(error: BaseException, key: str) -> StorageError:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ClientError):
            code = cause.response.get("Error", {}).get("Code", "")
            status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in {"404", "NoSuchKey", "NotFound"}:
                return ArtifactNotFound(key)
            if status >= 500 or code in _TRANSIENT_CODES:
                return StorageUnavailable(f"S3 answered {code or status} for {key!r}")
            return StorageError(f"S3 refused {key!r}: {code or status}")
        if isinstance(cause, BotoCoreError):
            return StorageUnavailable(f"S3 could not be reached for {key!r} ({type(cause).__name__})")
        cause = cause.__cause__ or cause.__context__
    return StorageUnavailable(f"the transfer of {key!r} failed ({type(error).__name__})")
