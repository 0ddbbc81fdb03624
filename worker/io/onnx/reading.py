"""Reading an uploaded ONNX file: size limit, parse, external data kept inside the upload, checker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from onnx import TensorProto

from service.core.intake import Rejected

PROTOBUF_LIMIT = 2**31 - 1  # bytes one serialized ModelProto can hold


def _iter_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every TensorProto of a graph: initializers, sparse ones, attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from _iter_tensors(sub)


def _external_location_ok(location: str) -> bool:
    if not location or "\x00" in location:
        return False
    if os.path.isabs(location) or PureWindowsPath(location).is_absolute() or PureWindowsPath(location).drive:
        return False
    if location.startswith(("/", "\\")):
        return False
    parts = PurePosixPath(location.replace("\\", "/")).parts
    return ".." not in parts


def check_external_data(model: onnx.ModelProto, base_dir: Path) -> int:
    """Validate every external-data reference against ``base_dir``; return the bytes referenced.

    Raises ``Rejected("external-data-outside-upload")`` when a location is absolute,
    contains ``..``, resolves (symlinks followed) outside ``base_dir``, is not a regular
    file, or when offset/length fall outside that file.
    """
    base = base_dir.resolve()
    total = 0
    for tensor in _iter_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        fix = (
            "External data must be a relative file name next to the model, inside the upload; "
            "re-export with save_as_external_data=True and a plain file name, or as one file."
        )
        if not _external_location_ok(location):
            raise Rejected(
                "external-data-outside-upload",
                f"tensor {tensor.name!r} points its external data at {location!r}, an absolute or "
                f"parent-relative path. {fix}",
            )
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise Rejected(
                "external-data-outside-upload",
                f"tensor {tensor.name!r} external data {location!r} resolves outside the upload "
                f"directory (a symbolic link?). {fix}",
            )
        if not target.is_file():
            raise Rejected(
                "external-data-outside-upload",
                f"tensor {tensor.name!r} external data file {location!r} is missing from the upload. {fix}",
            )
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else target.stat().st_size - offset
        except ValueError as exc:
            raise Rejected(
                "invalid-onnx", f"tensor {tensor.name!r} has a non-integer external-data offset/length."
            ) from exc
        if offset < 0 or length < 0 or offset + length > target.stat().st_size:
            raise Rejected(
                "invalid-onnx",
                f"tensor {tensor.name!r} external data range [{offset}, {offset + length}) lies outside "
                f"{location!r}; the data file is truncated or does not belong to this model.",
            )
        total += length
    return total


def read_onnx(path: Path) -> onnx.ModelProto:
    """Parse, validate external data, load it, and run ``onnx.checker`` (no conversion)."""
    path = Path(path)
    size = path.stat().st_size
    if size > PROTOBUF_LIMIT:
        raise Rejected(
            "model-too-large",
            f"the ONNX file is {size} bytes; protobuf cannot parse one message over 2 GiB. Export "
            "the weights as external data (onnx.save_model(..., save_as_external_data=True)) and "
            "upload the model with its data file in the same directory.",
        )
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise Rejected(
            "invalid-onnx",
            f"the file does not parse as an ONNX model ({type(exc).__name__}); upload a "
            "file written by torch.onnx.export or onnx.save_model.",
        ) from exc
    if not model.HasField("graph") or model.ir_version < 3:
        raise Rejected(
            "invalid-onnx", "the file is not an ONNX model with a graph (IR version 3 or newer); re-export it."
        )
    external = check_external_data(model, path.parent)
    if external:
        if external + size > PROTOBUF_LIMIT:
            raise Rejected(
                "model-too-large",
                f"model and external data total {external + size} bytes, above protobuf's 2 GiB limit "
                "that conversion needs; prune or quantize the model elsewhere first, or upload a "
                "zoo architecture with safetensors weights.",
            )
        try:
            onnx.load_external_data_for_model(model, str(path.parent.resolve()))
        except Exception as exc:
            raise Rejected("invalid-onnx", f"external data could not be read ({type(exc).__name__}).") from exc
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise Rejected(
            "invalid-onnx", f"onnx.checker rejects the model: {first_line}. Re-export it with a current exporter."
        ) from exc
    return model
