"""npz bombs are refused from the archive's headers, each with its own reason, before any
array is decompressed."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from service.core.intake import Rejected, check_dataset_file, read_npz_members
from service.core.intake.npz import MAX_ARRAYS


def _npz(tmp_path: Path, compressed: bool = False, **arrays) -> Path:
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _code(path: Path, max_bytes: int = 1 << 30) -> str:
    with pytest.raises(Rejected) as refused:
        check_dataset_file(path, max_bytes)
    assert len(str(refused.value)) > 40
    return refused.value.code


def test_headers_give_every_arrays_dtype_and_shape(tmp_path) -> None:
    path = _npz(tmp_path, x=np.zeros((5, 2, 3), np.uint8), y=np.arange(5))
    members = read_npz_members(path, 1 << 20)
    assert members["x"].shape == (5, 2, 3) and members["x"].kind == "u" and members["x"].itemsize == 1
    assert members["y"].shape == (5,) and members["x"].loaded_bytes == 5 * 6 * 4


def test_a_highly_compressed_member_is_refused_as_a_compression_bomb(tmp_path) -> None:
    path = _npz(tmp_path, compressed=True, x=np.zeros((64, 1 << 16), np.uint8), y=np.zeros(64, np.int64))
    assert path.stat().st_size < 64 * 1024  # 4 MiB of zeros in a few KiB
    assert _code(path) == "npz-compression-bomb"


def test_arrays_that_need_more_memory_than_the_limit_are_refused_before_loading(tmp_path) -> None:
    path = _npz(tmp_path, x=np.ones((100, 100), np.uint8), y=np.arange(100))
    assert _code(path, max_bytes=100 * 100 * 4) == "too-large"  # uint8 on disk, float32 in memory


def test_a_npy_header_that_lies_about_its_shape_is_refused(tmp_path) -> None:
    stored = io.BytesIO()
    np.save(stored, np.zeros((4, 4), np.float32))
    raw = stored.getvalue().replace(b"(4, 4)", b"(9, 4)")  # same header length, 9 rows claimed
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", raw)
        archive.writestr("y.npy", _npy(np.arange(4)))
    assert _code(path) == "npz-size-mismatch"


def test_too_many_members_are_refused(tmp_path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(MAX_ARRAYS + 1):
            archive.writestr(f"a{i}.npy", _npy(np.zeros(1)))
    assert _code(path) == "npz-too-many-arrays"


def test_object_arrays_are_refused_as_pickles(tmp_path) -> None:
    path = _npz(tmp_path, x=np.array([{"a": 1}, None], dtype=object), y=np.arange(2))
    assert _code(path) == "pickle-refused"


def test_a_huge_npy_header_length_is_refused(tmp_path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30) + b"{")
    assert _code(path) == "invalid-npz"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
