"""One intake decides what a file is; the rules the API and the worker used to disagree on
are now one rule each (the stricter one)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from service.core.intake import Rejected, check_dataset_file, check_model_file, sniff
from tests.factories import npz_bytes, tiny_onnx_bytes


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _write(tmp_path: Path, content: bytes, name: str = "upload.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_of_every_protocol_are_refused_as_pickles_for_models_and_datasets(tmp_path, protocol) -> None:
    marker = tmp_path / "ran"
    path = _write(tmp_path, pickle.dumps({"state": _Payload(marker), "w": [1.0, 2.0]}, protocol=protocol))
    assert sniff(path) == "pickle"
    for check in (lambda p: check_model_file(p, allow_torchscript=True), check_dataset_file):
        with pytest.raises(Rejected) as refused:
            check(path)
        assert refused.value.code == "pickle-refused"
    assert not marker.exists()


def test_a_zip_carrying_a_pickle_like_torch_save_writes_is_refused(tmp_path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        archive.writestr("archive/version", "3\n")
    path = _write(tmp_path, buffer.getvalue(), "weights.safetensors")
    assert sniff(path) == "pickle"
    with pytest.raises(Rejected) as refused:
        check_model_file(path, allow_torchscript=True)
    assert refused.value.code == "pickle-refused"


def test_an_npz_that_also_carries_a_pickle_member_is_refused_as_a_pickle(tmp_path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", io.BytesIO().getvalue())
        archive.writestr("payload.pkl", pickle.dumps(1))
    with pytest.raises(Rejected) as refused:
        check_dataset_file(_write(tmp_path, buffer.getvalue(), "d.npz"))
    assert refused.value.code == "pickle-refused"


def test_an_empty_file_is_refused_as_empty_for_models_and_datasets(tmp_path) -> None:
    path = _write(tmp_path, b"")
    for check in (lambda p: check_model_file(p, allow_torchscript=False), check_dataset_file):
        with pytest.raises(Rejected) as refused:
            check(path)
        assert refused.value.code == "empty-file" and "Accepted" in str(refused.value)


def test_files_are_recognised_by_content_whatever_their_name(tmp_path) -> None:
    assert check_model_file(_write(tmp_path, tiny_onnx_bytes(), "model.npz"), allow_torchscript=False) == "onnx"
    assert check_dataset_file(_write(tmp_path, npz_bytes(), "data.onnx")) == "npz"
    with pytest.raises(Rejected) as refused:
        check_model_file(_write(tmp_path, npz_bytes(), "m.onnx"), allow_torchscript=False)
    assert refused.value.code == "unsupported-format" and "/v1/datasets" in str(refused.value)


def test_torchscript_archives_pass_only_when_enabled(tmp_path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/code/__torch__.py", "")
        archive.writestr("model/constants.pkl", pickle.dumps(()))
    path = _write(tmp_path, buffer.getvalue(), "m.pt")
    assert check_model_file(path, allow_torchscript=True) == "torchscript"
    with pytest.raises(Rejected) as refused:
        check_model_file(path, allow_torchscript=False)
    assert refused.value.code == "torchscript-disabled"


def test_an_unknown_code_cannot_be_raised() -> None:
    with pytest.raises(ValueError):
        Rejected("no-such-code", "typo")


def test_random_bytes_are_neither_a_model_nor_a_dataset(tmp_path) -> None:
    path = _write(tmp_path, np.random.default_rng(0).bytes(4096))
    assert sniff(path) == "unknown"
    with pytest.raises(Rejected) as refused:
        check_dataset_file(path)
    assert refused.value.code == "unsupported-format"
