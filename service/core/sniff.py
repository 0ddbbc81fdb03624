"""Recognise an uploaded file's format from its bytes (never its name), without torch.

Cheap checks the API runs before accepting an upload; the worker's inspection does the deep
validation (ONNX conversion, safetensors offsets, dataset shapes).
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

ACCEPTED_MODELS = "ONNX (.onnx), safetensors state dict + zoo architecture, or TorchScript if enabled"
ACCEPTED_DATASETS = (".npz (x_train, y_train, x_val, y_val or x, y), .safetensors with the same keys, or a .zip or "
                     "uncompressed .tar of images (class folders or one flat folder, optionally under train/ and val/)")


class Unacceptable(ValueError):
    """The file cannot be accepted: ``code`` is stable, the message says how to fix it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sniff(path: Path) -> str:
    """One of ``onnx``, ``safetensors``, ``npz``, ``torchscript``, ``pickle``, ``empty``, ``unknown``."""
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as stream:
        head = stream.read(16)
    if head[:1] == b"\x80" and head[1:2] in {bytes([n]) for n in range(2, 6)}:
        return "pickle"
    if head[:4] == b"PK\x03\x04":
        return _sniff_zip(path)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len >= 2 and head[8:9] == b"{":
            return "safetensors"  # check_safetensors_header refuses a length beyond the file
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        return "onnx"
    return "unknown"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    leaves = {name.rsplit("/", 1)[-1] for name in names}
    if "constants.pkl" in leaves or any("/code/" in f"/{name}" for name in names):
        return "torchscript"
    if "data.pkl" in leaves or any(name.endswith(".pkl") for name in names):
        return "pickle"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    return "unknown"


def check_model_file(path: Path, allow_torchscript: bool) -> str:
    """The model format, or ``Unacceptable`` with a reason that names the accepted formats."""
    kind = sniff(path)
    if kind == "onnx":
        check_onnx_structure(path)
        return kind
    if kind == "safetensors":
        check_safetensors_header(path)
        return kind
    if kind == "torchscript" and allow_torchscript:
        return kind
    reasons = {
        "empty": ("empty-file", "The uploaded model file is empty."),
        "pickle": ("pickle-refused", "Pickled models (torch.save of a module or state dict) are "
                   "refused because loading them runs code."),
        "torchscript": ("torchscript-disabled", "TorchScript uploads are disabled on this server "
                        "(loading them runs code)."),
        "npz": ("unsupported-format", "This is a NumPy archive, not a model; upload it to /v1/datasets."),
    }  # fmt: skip
    code, message = reasons.get(kind, ("unsupported-format", "The file is not a recognised model."))
    raise Unacceptable(code, f"{message} Accepted: {ACCEPTED_MODELS}.")


def check_dataset_file(path: Path, limits=None) -> str:
    """The dataset format (``npz``, ``safetensors``, ``image-zip``, ``image-tar``), or ``Unacceptable``.

    Image archives are checked member by member and every image decoded
    (service.core.image_archives) with ``limits`` (an ``ArchiveLimits``; defaults when None).
    """
    from service.core import image_archives

    kind = sniff(path)
    if kind in {"npz", "safetensors"}:
        if kind == "safetensors":
            check_safetensors_header(path)
        return kind
    if kind in {"unknown", "tar"}:
        archive = image_archives.archive_kind(path)
        if archive is not None:
            image_archives.check_image_archive(path, limits or image_archives.ArchiveLimits())
            return f"image-{archive}"
    if kind == "empty":
        raise Unacceptable("empty-file", f"The uploaded dataset is empty. Accepted: {ACCEPTED_DATASETS}.")
    if kind == "pickle":
        raise Unacceptable("pickle-refused", f"Pickled data is refused. Accepted: {ACCEPTED_DATASETS}.")
    raise Unacceptable("unsupported-format", f"The file is not a recognised dataset. Accepted: {ACCEPTED_DATASETS}.")


# ----------------------------------------------------------------------------- safetensors

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}  # fmt: skip
MAX_SAFETENSORS_HEADER = 100 << 20


def check_safetensors_header(path: Path) -> None:
    """Validate a safetensors header against the file without loading any tensor: every
    tensor's byte range lies inside the data section, matches dtype x shape, and no two
    overlap. Memory stays bounded by the header size limit."""
    size = path.stat().st_size

    def bad(reason: str) -> Unacceptable:
        return Unacceptable("invalid-safetensors", f"The safetensors file is invalid: {reason}. "
                            "Write it with safetensors.torch.save_file (or numpy.save_file) and upload it whole.")  # fmt: skip

    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise bad(f"its header claims {length} bytes but the file has {size - 8}")
        try:
            header = json.loads(stream.read(length))
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise bad(f"the header is not valid JSON ({str(error)[:100]})") from error
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_size = size - 8 - length
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        label = repr(name[:80])
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {label} needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise bad(f"tensor {label} has the unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > 64 or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {label} has an invalid shape")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):  # fmt: skip
            raise bad(f"tensor {label} has data_offsets outside the file's {data_size} data bytes")
        count = 1
        for dim in shape:
            count *= dim
        if count * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise bad(f"tensor {label}: shape {shape[:8]} of {dtype} does not match its {offsets[1] - offsets[0]} bytes")
        ranges.append((offsets[0], offsets[1], label))
    ranges.sort()
    for (_, end, first), (start, _, second) in zip(ranges, ranges[1:], strict=False):
        if start < end:
            raise bad(f"tensors {first} and {second} overlap")


# ----------------------------------------------------------------------------- ONNX

MAX_ONNX_BYTES = (2 << 30) - 1  # protobuf's message limit: larger models need external data


class _Truncated(ValueError):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Truncated("varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value) of one protobuf message; length-delimited values
    are (start, end) slices. Raises _Truncated when the bytes end inside a field."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Truncated("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise _Truncated(f"wire type {wire}")
        if pos > end:
            raise _Truncated("a field runs past the end")
        yield number, wire, value


def _text(buf, value) -> str:
    return bytes(buf[value[0] : value[1]]).decode("utf-8", errors="replace")


def check_onnx_structure(path: Path) -> None:
    """Walk an ONNX ModelProto's wire format (no onnx package, no torch): refuse files over
    the protobuf limit, truncated or corrupt files, graphs whose nodes read undefined values,
    and tensors whose data lives in external files (which a single-file upload cannot carry)."""
    import mmap

    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise Unacceptable("model-too-large", f"The ONNX file is {size} bytes, over protobuf's 2 GiB limit; "
                           "export a smaller model (Shears accepts single-file ONNX only).")  # fmt: skip

    def invalid(reason: str) -> Unacceptable:
        return Unacceptable("invalid-onnx", f"The file starts like ONNX but is not a complete model ({reason}); "
                            "upload the whole file as written by torch.onnx.export or onnx.save_model.")  # fmt: skip

    with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            top = {1: None, 7: None, 8: 0}
            for number, wire, value in _fields(buf, 0, size):
                if number in (1, 7) and wire == (0 if number == 1 else 2):
                    top[number] = value
                elif number == 8 and wire == 2:
                    top[8] += 1
            if not top[1]:
                raise invalid("no ir_version")
            if top[7] is None:
                raise invalid("no graph")
            if not top[8]:
                raise invalid("no opset_import")
            defined, used, outputs, nodes = {""}, [], [], 0
            for number, wire, value in _fields(buf, *top[7]):
                if wire != 2:
                    continue
                if number == 1:  # NodeProto
                    nodes += 1
                    node = {"in": [], "name": "", "op": ""}
                    for n, w, v in _fields(buf, *value):
                        if w != 2:
                            continue
                        if n == 1:
                            node["in"].append(_text(buf, v))
                        elif n == 2:
                            defined.add(_text(buf, v))
                        elif n == 3:
                            node["name"] = _text(buf, v)
                        elif n == 4:
                            node["op"] = _text(buf, v)
                    used.append(node)
                elif number in (5, 15):  # initializer / sparse_initializer
                    _check_tensor(buf, value if number == 5 else _sparse_values(buf, value), defined)
                elif number == 11:  # graph input (ValueInfoProto)
                    defined.update(_text(buf, v) for n, w, v in _fields(buf, *value) if n == 1 and w == 2)
                elif number == 12:
                    outputs.extend(_text(buf, v) for n, w, v in _fields(buf, *value) if n == 1 and w == 2)
        except _Truncated as error:
            raise invalid(f"truncated or corrupt: {error}") from error
    if not nodes:
        raise invalid("its graph has no nodes")
    if not outputs:
        raise invalid("its graph has no outputs")
    for node in used:
        for name in node["in"]:
            if name not in defined:
                raise invalid(f"node {node['name']!r} ({node['op']}) reads {name[:100]!r}, which nothing defines")
    for name in outputs:
        if name not in defined:
            raise invalid(f"graph output {name[:100]!r} is never computed")


def _sparse_values(buf, value):
    for n, w, v in _fields(buf, *value):
        if n == 1 and w == 2:  # SparseTensorProto.values (a TensorProto, named like the tensor)
            return v
    return (value[0], value[0])


def _check_tensor(buf, value, defined: set) -> None:
    name, location, external = "", None, False
    for n, w, v in _fields(buf, *value):
        if n == 8 and w == 2:
            name = _text(buf, v)
        elif n == 14 and w == 0 and v == 1:
            external = True
        elif n == 13 and w == 2:  # external_data: StringStringEntryProto {key, value}
            entry = {k: _text(buf, x) for k, ww, x in _fields(buf, *v) if ww == 2}
            if entry.get(1) == "location":
                location = entry.get(2, "")
    defined.add(name)
    if external or location is not None:
        where = location or "?"
        escapes = where.startswith(("/", "\\")) or ".." in where.replace("\\", "/").split("/") or ":" in where
        reason = "a path outside the upload" if escapes else "a separate file, which a single-file upload cannot carry"
        raise Unacceptable("external-data-outside-upload",
                           f"Tensor {name[:100]!r} keeps its data in {where[:200]!r}, {reason}. Save the model as one file: "
                           "torch.onnx.export(..., external_data=False) or "
                           "onnx.save_model(model, path, save_as_external_data=False).")  # fmt: skip
