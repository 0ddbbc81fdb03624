"""The artifact store interface; backends are chosen by URI scheme (see ``open_store``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol


class StorageError(Exception):
    """The artifact store refused or failed an operation (backends wrap their own errors)."""


class StorageUnavailable(StorageError):
    """The store could not be reached or answered 5xx/throttling after its own retries: a
    transient condition, worth retrying later."""


class ArtifactNotFound(StorageError, KeyError):
    """No object is stored under the requested key."""


class ArtifactStore(Protocol):
    """Object storage of uploads and job artifacts, addressed by ``/``-separated keys."""

    uri: str

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` (all or nothing: no partial object)."""

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Store everything read from ``stream`` under ``key`` (all or nothing)."""

    def get_file(self, key: str, path: Path) -> None:
        """Copy the object ``key`` into the local file ``path``."""

    def iter_bytes(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object ``key`` in chunks."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix``."""

    def presigned_url(self, key: str, expires_s: int = 900) -> str | None:
        """A time-limited download URL, or None when the backend serves bytes itself."""

    def check(self) -> None:
        """Raise when the backend cannot be reached or written."""
