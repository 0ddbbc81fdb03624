"""``file://`` artifact store: a directory on the local disk (the embedded default)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname

from service.core.storage.base import ArtifactNotFound


class LocalArtifactStore:
    """Objects are files under ``root``; writes go to a temporary file and are renamed."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = Path(url2pathname(urlparse(uri).path)).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"artifact key {key!r} escapes the store")
        return path

    def put_file(self, key: str, path: Path) -> None:
        """Store ``path`` under ``key``. On the same filesystem the file is hard-linked, not
        copied (a 1 GiB upload is not written twice); the caller must not modify ``path``
        afterwards, only delete it (uploads' temporary files, a job's output directory)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        link = target.parent / f".upload-{uuid.uuid4().hex}"
        try:
            os.link(path, link)
        except OSError:  # another filesystem, or links not supported: copy
            with open(path, "rb") as stream:
                self.put_stream(key, stream)
            return
        try:
            os.replace(link, target)
        except BaseException:
            link.unlink(missing_ok=True)
            raise

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ArtifactNotFound(key)
        shutil.copyfile(source, path)

    def iter_bytes(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        source = self._path(key)
        if not source.is_file():
            raise ArtifactNotFound(key)
        with open(source, "rb") as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        source = self._path(key)
        if not source.is_file():
            raise ArtifactNotFound(key)
        return source.stat().st_size

    def delete_prefix(self, prefix: str) -> None:
        base = self._path(prefix.rstrip("/"))
        if base.is_dir():
            shutil.rmtree(base)
        else:
            base.unlink(missing_ok=True)

    def presigned_url(self, key: str, expires_s: int = 900) -> str | None:
        return None

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".check-"):
            pass
