"""Validation of a safetensors header before any library touches the file.

Layout: 8-byte little-endian header length ``n``, ``n`` bytes of JSON, then the data buffer.
A lying header (length past the end, duplicate names, overlapping, out-of-range or gapped
offsets, shapes that do not match their byte span, unknown dtypes, absurd tensor counts) is
refused while reading at most ``MAX_HEADER_BYTES`` of the file, so memory stays bounded.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from service.core.intake.errors import Rejected

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 100_000
MAX_RANK = 16
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype name, shape, and byte range inside the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _bad(reason: str) -> Rejected:
    return Rejected(
        "invalid-safetensors",
        f"The safetensors file is invalid: {reason}. Write it with safetensors.torch.save_file "
        "(or safetensors.numpy.save_file) and upload it whole.",
    )


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _bad("the header repeats a tensor name")
    return dict(pairs)


def looks_like_safetensors(head: bytes) -> bool:
    """Cheap sniff of the first 9 bytes: a header length of at least 2, then ``{``."""
    return len(head) >= 9 and struct.unpack("<Q", head[:8])[0] >= 2 and head[8:9] == b"{"


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate ``path``'s header; return ``(tensors, metadata)`` or raise ``Rejected``."""
    path = Path(path)
    file_size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _bad(f"the file has {file_size} bytes, fewer than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            raise _bad(f"the header claims {header_len} bytes (limit {MAX_HEADER_BYTES})")
        if header_len > file_size - 8:
            raise _bad(f"the header claims {header_len} bytes but only {file_size - 8} follow (truncated file?)")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, Rejected):
            raise
        raise _bad("the header is not valid UTF-8 JSON") from exc
    if not isinstance(header, dict):
        raise _bad("the header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad("__metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise _bad(f"the header lists {len(header)} tensors (limit {MAX_TENSORS})")
    data_len = file_size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        label = repr(name[:80])
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _bad(f"tensor {label} needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise _bad(f"tensor {label} has the unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(type(d) is int and d >= 0 for d in shape):
            raise _bad(f"tensor {label}: shape must be a list of at most {MAX_RANK} non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise _bad(f"tensor {label}: data_offsets must be two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise _bad(f"tensor {label}: data_offsets [{begin}, {end}] fall outside the {data_len}-byte data buffer")
        needed = math.prod(shape) * DTYPE_SIZES[dtype]
        if needed != end - begin:
            raise _bad(
                f"tensor {label}: shape {shape[:8]} of {dtype} needs {needed} bytes but its offsets span {end - begin}"
            )
        tensors[name] = TensorInfo(dtype, tuple(shape), begin, end)
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin < position:
            raise _bad(f"tensor {name[:80]!r} overlaps the previous tensor's bytes")
        if info.begin > position:
            raise _bad(f"the data buffer has a gap before tensor {name[:80]!r}")
        position = info.end
    if position != data_len:
        raise _bad(f"the data buffer has {data_len - position} bytes no tensor accounts for")
    return tensors, metadata
