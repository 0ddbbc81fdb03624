"""Safetensors headers: the stricter of the two former validators is the only one."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from service.core.intake import Rejected, check_dataset_file, check_model_file, read_safetensors_header
from service.core.intake.safetensors import MAX_HEADER_BYTES, MAX_RANK


def _file(tmp_path: Path, header: dict | bytes, data: bytes, header_len: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def _refused(path: Path) -> str:
    with pytest.raises(Rejected) as refused:
        read_safetensors_header(path)
    assert refused.value.code == "invalid-safetensors"
    return str(refused.value)


def test_a_header_over_sixteen_mebibytes_is_refused_even_when_the_file_holds_it(tmp_path) -> None:
    padding = b" " * (MAX_HEADER_BYTES + 1 - 2)
    assert "limit" in _refused(_file(tmp_path, b"{" + padding + b"}", b""))


def test_a_tensor_of_rank_above_sixteen_is_refused(tmp_path) -> None:
    shape = [1] * (MAX_RANK + 1)
    assert "shape" in _refused(_file(tmp_path, {"a": {"dtype": "U8", "shape": shape, "data_offsets": [0, 1]}}, b"\0"))


def test_a_gap_in_the_data_buffer_is_refused(tmp_path) -> None:
    assert "gap" in _refused(_file(tmp_path, {"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, b"\0\0"))


def test_bytes_no_tensor_accounts_for_are_refused(tmp_path) -> None:
    assert "accounts" in _refused(
        _file(tmp_path, {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0\0")
    )


def test_a_repeated_tensor_name_is_refused(tmp_path) -> None:
    raw = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    assert "repeats" in _refused(_file(tmp_path, raw, b"\0"))


def test_a_valid_file_passes_as_model_weights_and_as_a_dataset(tmp_path) -> None:
    path = tmp_path / "d.safetensors"
    save_file({"x": np.zeros((4, 3), np.float32), "y": np.arange(4)}, str(path))
    tensors, _ = read_safetensors_header(path)
    assert tensors["x"].shape == (4, 3)
    assert check_model_file(path, allow_torchscript=False) == "safetensors"
    assert check_dataset_file(path) == "safetensors"
    with pytest.raises(Rejected) as refused:
        check_dataset_file(path, max_bytes=32)
    assert refused.value.code == "too-large"
