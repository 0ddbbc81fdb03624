"""Artifact storage, backend chosen by the URI scheme of ``Settings.storage_uri``."""

from __future__ import annotations

from urllib.parse import urlparse

from service.core.config import Settings
from service.core.storage.base import ArtifactNotFound, ArtifactStore, StorageError, StorageUnavailable

__all__ = ["ArtifactNotFound", "ArtifactStore", "StorageError", "StorageUnavailable", "open_store"]


def open_store(settings: Settings, uri: str | None = None) -> ArtifactStore:
    """The store for ``uri`` (default: the configured one): ``file://`` or ``s3://``."""
    uri = uri or settings.resolved_storage_uri
    scheme = urlparse(uri).scheme
    if scheme == "file":
        from service.core.storage.local import LocalArtifactStore

        return LocalArtifactStore(uri)
    if scheme == "s3":
        from service.core.storage.s3 import S3ArtifactStore

        return S3ArtifactStore(uri, settings)
    raise ValueError(f"unsupported storage URI scheme {scheme!r} in {uri!r}; use file:// or s3://")
