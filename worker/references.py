"""Datasets registered by reference (``DatasetRecord.source_uri``): inspected and read where they live.

Inspection (on the inspection queue, with the worker's S3 credentials) lists the prefix and
checks the listing like an image archive (service.core.intake.references), decodes a bounded,
evenly spread sample of ``SHEARS_DATASET_REFERENCE_SAMPLE`` images, and stores the manifest —
every key with its ETag and size — in Shears' own storage under the row's ``storage_key``. A
single object (``.npz``/``.safetensors``/``.zip``/``.tar``) is copied to a temporary file and
checked exactly as an upload. A job reads the manifest's snapshot: images lazily from the
bucket (``If-Match`` the listed ETag, through a per-job disk cache of ``SHEARS_DATASET_CACHE_BYTES``),
a single object copied into the job's work directory. Nothing is ever written to or deleted
from the referenced bucket.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path, PurePosixPath

from service.core.config import Settings
from service.core.intake import Rejected
from service.core.intake.archives import decode_image
from service.core.intake.references import (
    Reference,
    index_listing,
    index_of_manifest,
    manifest_of,
    parse_reference,
)
from service.core.models import DatasetRecord
from service.core.storage import ArtifactNotFound, ArtifactStore
from service.core.storage.bucket import BucketReader, PrefixObjects
from worker.io.images import IndexedImages


def _manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()


def _sample(count: int, k: int) -> list[int]:
    """``k`` positions spread evenly over ``count`` (all of them when ``count <= k``)."""
    if count <= k:
        return list(range(count))
    return sorted({round(i * (count - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def _list_prefix(reference: Reference, settings: Settings) -> dict:
    index = index_listing(reference, BucketReader(settings).list(reference), settings.archive_limits())
    return manifest_of(reference, index)


def _object_manifest(reference: Reference, settings: Settings) -> dict:
    listed = BucketReader(settings).head(reference)
    if listed.size > settings.dataset_reference_max_object_bytes:
        raise Rejected(
            "reference-too-large",
            f"{reference.uri[:200]} has {listed.size} bytes, above the limit of "
            f"{settings.dataset_reference_max_object_bytes} (SHEARS_DATASET_REFERENCE_MAX_OBJECT_BYTES); "
            "register a folder of images instead, or ask the operator to raise the limit.",
        )
    return {"version": 1, "uri": reference.uri, "kind": "object", "etag": listed.etag, "size": listed.size}


def _download(reference: Reference, manifest: dict, settings: Settings, path: Path) -> None:
    BucketReader(settings).download(reference.bucket, reference.key, manifest["etag"], manifest["size"], path)


def inspect_reference(row: DatasetRecord, settings: Settings, store: ArtifactStore) -> tuple[dict, dict]:
    """List and check the referenced data, store its manifest; returns (info, columns:
    ``sha256`` of the manifest — the snapshot's identity — and ``size_bytes`` of the data)."""
    from worker.inspection import examine_dataset_file
    from worker.io.images import load_image_index

    reference = parse_reference(row.source_uri)
    if reference.is_prefix:
        manifest = _list_prefix(reference, settings)
        index = index_of_manifest(manifest)
        source = PrefixObjects(settings, reference)
        try:
            members = [index.members[i] for i in _sample(len(index.members), settings.dataset_reference_sample)]
            for member, data in zip(members, source.read_many(members), strict=True):
                decode_image(data, member.name, settings.image_max_pixels).close()
            data = load_image_index(index, source, max_pixels=settings.image_max_pixels)
        finally:
            source.close()
        size = sum(m.size for m in index.members)
        summary = index.summary()
        summary["archive"] = None
        info = {
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "labelled": data.labelled,
            "train_samples": len(data.x_train),
            "val_samples": len(data.x_val),
            "format": "image-prefix",
            "images": summary,
            "reference": {"uri": reference.uri, "objects": len(index.members), "bytes": size, "decoded": len(members)},
            "note": "input_shape is for the default preprocessing; jobs declare theirs in spec.preprocessing. "
            f"{len(members)} of {len(index.members)} images were decoded here; a job decodes every image it reads",
        }
    else:
        manifest = _object_manifest(reference, settings)
        size = manifest["size"]
        with tempfile.TemporaryDirectory(prefix="shears-inspect-") as tmp:
            path = Path(tmp) / f"reference{PurePosixPath(reference.key).suffix.lower()}"
            _download(reference, manifest, settings, path)
            info = examine_dataset_file(path, settings)
        info["reference"] = {"uri": reference.uri, "objects": 1, "bytes": size, "etag": manifest["etag"]}
    body = _manifest_bytes(manifest)
    store.put_stream(row.storage_key, io.BytesIO(body))
    return info, {"sha256": hashlib.sha256(body).hexdigest(), "size_bytes": size}


class DatasetInvalid(Exception):
    """The dataset's inspection failed after the job was accepted: the job fails ``dataset-invalid``."""

    code = "dataset-invalid"


def _manifest(row: DatasetRecord, settings: Settings, store: ArtifactStore, reference: Reference) -> dict:
    """The stored manifest; a dataset still ``validating`` is listed now (the same checks)."""
    try:
        return json.loads(b"".join(store.iter_bytes(row.storage_key)))
    except ArtifactNotFound:
        if row.status == "invalid":
            error = row.error or {}
            raise DatasetInvalid(
                f"dataset {row.id} was found invalid ({error.get('code')}: {error.get('message')}); "
                "fix the data and register it again"
            ) from None
        if row.status != "validating":
            raise Rejected(
                "input-deleted", f"the manifest of dataset {row.id} is gone; register {reference.uri[:200]} again."
            ) from None
    return _list_prefix(reference, settings) if reference.is_prefix else _object_manifest(reference, settings)


def open_reference(
    row: DatasetRecord, settings: Settings, store: ArtifactStore, workdir: Path
) -> tuple[Path | None, IndexedImages | None]:
    """What a job reads: a single object copied into ``workdir`` (its path), or the images of
    a prefix to decode lazily from the bucket."""
    reference = parse_reference(row.source_uri)
    manifest = _manifest(row, settings, store, reference)
    if manifest["kind"] == "object":
        path = workdir / f"input-dataset{PurePosixPath(reference.key).suffix.lower()}"
        _download(reference, manifest, settings, path)
        return path, None
    source = PrefixObjects(settings, reference, workdir / "dataset-cache", settings.dataset_cache_bytes)
    images = IndexedImages(index_of_manifest(manifest), source, reference.uri, settings.image_max_pixels)
    return None, images
