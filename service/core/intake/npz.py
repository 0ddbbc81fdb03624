"""``.npz`` checks from the archive's own headers, before any array is read.

Every member's declared uncompressed size and its ``.npy`` header (dtype, shape, order) are
read from the zip directory and the first bytes of each member; a bomb is refused with a
named reason before a single array is decompressed:

- ``npz-too-many-arrays``: more members than any dataset layout needs;
- ``npz-compression-bomb``: a member that inflates more than ``MAX_RATIO`` times;
- ``npz-size-mismatch``: a ``.npy`` header whose shape x dtype disagrees with the member's size;
- ``too-large``: the arrays, as float32 features and int64 labels, exceed the memory limit;
- ``pickle-refused``: object arrays (``np.load`` would have to unpickle them).
"""

from __future__ import annotations

import ast
import math
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from service.core.intake.errors import Rejected

MAX_ARRAYS = 64
MAX_RATIO = 200  # deflate tops out near 1032:1 on zeros; real datasets stay far below 200:1
RATIO_FLOOR_BYTES = 1 << 20  # tiny members may compress absurdly well (a column of zeros)
MAX_NPY_HEADER = 64 * 1024
MAX_RANK = 16
_MAGIC = b"\x93NUMPY"
_DESCR = re.compile(r"^[<>|=]?([biufc])(\d{1,2})$")
FIX = "Write the arrays with numpy.savez (or numpy.savez_compressed) and upload the file whole."


@dataclass(frozen=True)
class NpyMember:
    """One array of an ``.npz`` as its headers describe it (nothing decompressed yet)."""

    key: str
    member: str
    descr: str
    kind: str  # numpy dtype kind: b i u f c
    itemsize: int
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int  # bytes of .npy header before the data, inside the member

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def loaded_bytes(self) -> int:
        """Bytes in memory once loaded for training: labels as int64, features as float32."""
        return self.count * (8 if self.key.startswith("y") else 4)


def _invalid(reason: str) -> Rejected:
    return Rejected("invalid-npz", f"The .npz archive is not usable: {reason}. {FIX}")


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[dict, int]:
    with archive.open(info) as stream:
        prefix = stream.read(12)
        if prefix[:6] != _MAGIC or len(prefix) < 10:
            raise _invalid(f"member {info.filename[:80]!r} is not a .npy array")
        major = prefix[6]
        if major == 1:
            (length,), start = struct.unpack("<H", prefix[8:10]), 10
        elif major in (2, 3) and len(prefix) >= 12:
            (length,), start = struct.unpack("<I", prefix[8:12]), 12
        else:
            raise _invalid(f"member {info.filename[:80]!r} has the unknown .npy version {major}")
        if length > MAX_NPY_HEADER:
            raise _invalid(f"member {info.filename[:80]!r} has a {length}-byte .npy header (limit {MAX_NPY_HEADER})")
        raw = prefix[start:] + stream.read(length - (len(prefix) - start))
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin-1"))  # literals only: no code runs
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _invalid(f"member {info.filename[:80]!r} has an unreadable .npy header") from exc
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _invalid(f"member {info.filename[:80]!r} has an unreadable .npy header")
    return header, start + length


def read_npz_members(path: Path, max_bytes: int) -> dict[str, NpyMember]:
    """Each array's dtype and shape from the headers, or ``Rejected`` naming the bomb."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _invalid("it is not a readable zip archive") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ARRAYS:
            raise Rejected(
                "npz-too-many-arrays",
                f"The .npz holds {len(infos)} members; a dataset needs at most 6 arrays (limit {MAX_ARRAYS}). "
                "Save only x_train, y_train, x_val, y_val (optionally x_test, y_test) or x, y.",
            )
        members: dict[str, NpyMember] = {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or "/" in name or name in members:
                raise _invalid(f"member {name[:80]!r} is not a .npy array at the top level")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _invalid(f"member {name[:80]!r} uses zip compression method {info.compress_type}")
            if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise Rejected(
                    "npz-compression-bomb",
                    f"Member {name[:80]!r} inflates from {info.compress_size} to {info.file_size} bytes "
                    f"(over {MAX_RATIO}:1), which real data never does. {FIX}",
                )
            header, offset = _npy_header(archive, info)
            descr, shape, fortran = header["descr"], header["shape"], header["fortran_order"]
            if not isinstance(descr, str) or "O" in descr:
                code = "pickle-refused" if isinstance(descr, str) else "bad-dtype"
                raise Rejected(
                    code,
                    f"Array {name[:-4][:80]!r} holds Python objects or records (dtype {str(descr)[:40]}); "
                    "loading it would unpickle. Save plain numeric arrays with numpy.savez.",
                )
            match = _DESCR.match(descr)
            if match is None:
                raise Rejected(
                    "bad-dtype", f"Array {name[:-4][:80]!r} has dtype {descr[:20]!r}; use a numeric dtype. {FIX}"
                )
            if (
                not isinstance(shape, tuple)
                or len(shape) > MAX_RANK
                or not all(type(d) is int and d >= 0 for d in shape)
                or type(fortran) is not bool
            ):
                raise _invalid(f"member {name[:80]!r} has an invalid shape")
            itemsize = int(match.group(2))
            entry = NpyMember(name[:-4], name, descr, match.group(1), itemsize, shape, fortran, offset)
            if entry.count * itemsize != info.file_size - offset:
                raise Rejected(
                    "npz-size-mismatch",
                    f"Array {entry.key[:80]!r} claims shape {list(shape)[:8]} of {descr} ({entry.count * itemsize} bytes) "
                    f"but its member holds {info.file_size - offset} data bytes. {FIX}",
                )
            members[entry.key] = entry
    loaded = sum(m.loaded_bytes for m in members.values())
    if loaded > max_bytes:
        raise Rejected(
            "too-large",
            f"The arrays need {loaded} bytes in memory (features as float32, labels as int64), above this "
            f"server's {max_bytes}-byte dataset limit; upload fewer or smaller samples.",
        )
    return members
