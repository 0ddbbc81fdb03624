"""Datasets registered by reference to object storage instead of uploaded (torch-free).

A reference is ``s3://bucket/prefix/`` (a folder of images: class folders are labelled like
torchvision's ImageFolder, a flat folder is unlabelled, ``train/`` + ``val/`` give the split)
or ``s3://bucket/key`` (one ``.npz``, ``.safetensors``, ``.zip`` or ``.tar`` dataset).

The API checks the URI before anything is stored: scheme, bucket name, key segments (no
``..``, ``.`` or empty ones), the operator's allowlist ``SHEARS_DATASET_REFERENCE_PREFIXES``
(empty: the feature is off), and never Shears' own artifact storage (another tenant's uploads
live there). The worker then lists the prefix with its own credentials and checks the listing
with the rules of an image archive (count, per-object and total size, key paths, image
suffixes, layout); the listing — every key with its ETag and size — becomes the dataset's
manifest, so every job reads that snapshot and notices an object that changed or vanished.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from urllib.parse import urlparse

from service.core.intake.archives import (
    _IGNORED_NAMES,
    IMAGE_SUFFIXES,
    LAYOUT_HELP,
    ArchiveLimits,
    ImageIndex,
    ImageMember,
    _layout,
)
from service.core.intake.errors import Rejected

MAX_URI_CHARS = 1100
OBJECT_SUFFIXES = (".npz", ".safetensors", ".zip", ".tar")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SETTING = "SHEARS_DATASET_REFERENCE_PREFIXES"
URI_HELP = "Give s3://bucket/prefix/ (a folder of images, ending in /) or s3://bucket/key.npz (one dataset object)."


@dataclass(frozen=True)
class Reference:
    """A checked reference: ``key`` is a prefix ending in ``/`` (or empty: the whole bucket) or one object."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def name(self) -> str:
        """The last path segment (the dataset's ``filename``)."""
        return PurePosixPath(self.key.rstrip("/")).name or self.bucket

    def contains(self, other: Reference) -> bool:
        return self.bucket == other.bucket and other.key.startswith(self.key)


def _invalid(uri: str, why: str) -> Rejected:
    return Rejected("invalid-reference", f"{uri[:200]!r} {why}. {URI_HELP}")


def parse_reference(uri: object) -> Reference:
    """The bucket and key of ``uri``, or ``Rejected("invalid-reference")`` saying what is wrong."""
    if not isinstance(uri, str) or not uri:
        raise Rejected("invalid-reference", f"uri must be a non-empty string. {URI_HELP}")
    if len(uri) > MAX_URI_CHARS:
        raise _invalid(uri, f"is longer than {MAX_URI_CHARS} characters")
    if not uri.startswith("s3://"):
        scheme = urlparse(uri).scheme
        why = f"uses the scheme {scheme!r}" if scheme else "has no scheme"
        raise _invalid(uri, f"{why}; only s3:// object storage can be referenced")
    if any(c in uri for c in "?#\\") or any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise _invalid(uri, "contains '?', '#', a backslash or a control character")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise _invalid(uri, f"names the bucket {bucket[:70]!r}, not a valid S3 bucket name")
    segments = key.split("/")
    body = segments[:-1] if key.endswith("/") else segments
    if key and any(s in ("", ".", "..") for s in body):
        raise _invalid(uri, "has an empty, '.' or '..' path segment; give the plain path")
    if len(key.encode()) > 1024:
        raise _invalid(uri, "has a key longer than 1024 bytes")
    return Reference(bucket, key)


def normalise_allowed_prefix(entry: str) -> str:
    """An allowlist entry as ``s3://bucket/prefix/`` (``ValueError`` when it is not one)."""
    text = entry if entry.endswith("/") else entry + "/"
    try:
        return parse_reference(text).uri
    except Rejected as error:
        raise ValueError(f"{_SETTING}: {error}") from error


def _storage_reference(storage_uri: str | None) -> Reference | None:
    if not storage_uri or not storage_uri.startswith("s3://"):
        return None
    parsed = urlparse(storage_uri)
    prefix = parsed.path.strip("/")
    return Reference(parsed.netloc, f"{prefix}/" if prefix else "")


def check_reference(uri: object, allowed: list[str], storage_uri: str | None) -> Reference:
    """Parse ``uri`` and check it against the allowlist; ``Rejected`` codes:
    ``references-disabled`` (empty allowlist), ``invalid-reference``, ``reference-not-allowed``
    (outside every allowed prefix, or overlapping Shears' own storage)."""
    if not allowed:
        raise Rejected(
            "references-disabled",
            "Registering datasets by reference is off on this server: the operator lists the allowed "
            f'prefixes in {_SETTING} (e.g. ["s3://datasets/team-a/"]). Until then, upload the data as a file.',
        )
    reference = parse_reference(uri)
    if not reference.is_prefix and not reference.key.lower().endswith(OBJECT_SUFFIXES):
        raise _invalid(
            reference.uri,
            f"names one object that is not {', '.join(OBJECT_SUFFIXES)}; "
            "end the URI with '/' to register a folder of images",
        )
    own = _storage_reference(storage_uri)
    if own is not None and (own.contains(reference) or reference.contains(own)):
        raise Rejected(
            "reference-not-allowed",
            f"{reference.uri[:200]!r} overlaps Shears' own storage ({own.uri}), which holds other "
            "uploads and artifacts; reference your data where it lives instead.",
        )
    if not any(parse_reference(prefix).contains(reference) for prefix in allowed):
        shown = ", ".join(allowed[:5]) + (" …" if len(allowed) > 5 else "")
        raise Rejected(
            "reference-not-allowed",
            f"{reference.uri[:200]!r} is outside the prefixes this server may read ({shown}); move or copy "
            f"the data under one of them, or ask the operator to add its prefix to {_SETTING}.",
        )
    return reference


# ------------------------------------------------------------------------- the listing


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing: its full key, size and ETag."""

    key: str
    size: int
    etag: str


def _object_parts(name: str, uri: str) -> list[str]:
    if "\\" in name or "\x00" in name or name.startswith("/"):
        raise Rejected(
            "unsafe-object-key",
            f"object {name[:200]!r} under {uri[:200]} has a backslash, a NUL or a leading '/' in its key; rename it.",
        )
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Rejected(
            "unsafe-object-key",
            f"object {name[:200]!r} under {uri[:200]} has an empty, '.' or '..' segment in its key; rename it.",
        )
    return parts


def index_listing(reference: Reference, objects: Iterable[ListedObject], limits: ArchiveLimits) -> ImageIndex:
    """Check a prefix's listing as an image archive is checked (reads no image) and work out
    the layout; members carry their ETags. ``Rejected`` names the first problem."""
    uri = reference.uri
    entries: list[tuple[list[str], str, int, int]] = []
    etags: dict[str, str] = {}
    total = count = 0
    for listed in objects:
        count += 1
        if count > limits.max_members:
            raise Rejected(
                "too-many-objects",
                f"{uri[:200]} holds more than {limits.max_members} objects (SHEARS_ARCHIVE_MAX_MEMBERS); "
                "register a smaller prefix or ask the operator to raise the limit.",
            )
        name = listed.key[len(reference.key) :]
        if not name or (name.endswith("/") and listed.size == 0):
            continue  # a "folder" marker made by consoles
        parts = _object_parts(name, uri)
        if parts[0] == "__MACOSX" or parts[-1] in _IGNORED_NAMES or parts[-1].startswith("._"):
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            raise Rejected(
                "not-an-image",
                f"object {name[:200]!r} under {uri[:200]} is not an image "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); move other files out of the prefix.",
            )
        if listed.size > limits.max_member_bytes:
            raise Rejected(
                "image-too-large",
                f"object {name[:200]!r} has {listed.size} bytes, above the per-image limit of "
                f"{limits.max_member_bytes} (SHEARS_ARCHIVE_MAX_MEMBER_BYTES).",
            )
        total += listed.size
        if total > limits.max_total_bytes:
            raise Rejected(
                "reference-too-large",
                f"the images under {uri[:200]} are more than {limits.max_total_bytes} bytes "
                "(SHEARS_ARCHIVE_MAX_TOTAL_BYTES); register a smaller prefix.",
            )
        entries.append((parts, name, listed.size, -1))
        etags[name] = listed.etag
    if not entries:
        raise Rejected("no-images", f"{uri[:200]} holds no images. {LAYOUT_HELP}")
    index = _layout("s3", entries, noun="object")
    index.members = [replace(member, etag=etags[member.name]) for member in index.members]
    return index


def manifest_of(reference: Reference, index: ImageIndex) -> dict:
    """The snapshot a job reads: every member's key (relative to the prefix), size, ETag, label, split."""
    return {
        "version": 1,
        "uri": reference.uri,
        "kind": "prefix",
        "classes": index.classes,
        "members": [[m.name, m.size, m.etag, m.label, m.split] for m in index.members],
    }


def index_of_manifest(manifest: dict) -> ImageIndex:
    """The ``ImageIndex`` a manifest of a prefix records."""
    members = [
        ImageMember(name=name, size=size, etag=etag, label=label, split=split)
        for name, size, etag, label, split in manifest["members"]
    ]
    return ImageIndex(kind="s3", members=members, classes=list(manifest["classes"]))
