"""Model intake by content: pickles refused unexecuted, safetensors validated, inspection."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from service.core.intake import Rejected, sniff
from tests.worker.io.conftest import export, make_model
from worker.io import zoo
from worker.io.models import inspect_model, load_model


class _Payload:
    """Unpickling this creates ``marker`` — proof that a loader ran the file's code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _reject(path: Path, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as err:
        load_model(path, **kwargs)
    return err.value


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_pickled_model_is_refused_without_running_its_payload(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.onnx"  # the extension lies; detection reads the content
    path.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=protocol))
    assert sniff(path) == "pickle"
    err = _reject(path, architecture="resnet20", allow_torchscript=True)
    assert err.code == "pickle-refused"
    assert "ONNX" in str(err) and "safetensors" in str(err)
    assert not marker.exists()


def test_a_torch_save_archive_is_refused_without_running_its_payload(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.safetensors"
    torch.save({"state": _Payload(str(marker)), "w": torch.zeros(2)}, path)
    assert zipfile.is_zipfile(path) and sniff(path) == "pickle"
    assert _reject(path, architecture="resnet20", allow_torchscript=True).code == "pickle-refused"
    assert not marker.exists()


def test_a_plain_torch_save_state_dict_is_refused_naming_the_accepted_formats(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(zoo.build("mnist1d_cnn").state_dict(), path)
    err = _reject(path, architecture="mnist1d_cnn")
    assert err.code == "pickle-refused" and "save_file" in str(err)


def test_torchscript_is_refused_unless_the_operator_enables_it(tmp_path):
    model = zoo.build("mnist1d_cnn").eval()
    path = tmp_path / "model.bin"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 1, 40)), str(path))
    assert sniff(path) == "torchscript"
    assert _reject(path).code == "torchscript-disabled"
    loaded = load_model(path, allow_torchscript=True)
    assert loaded.format == "torchscript"
    x = torch.randn(3, 1, 40)
    torch.testing.assert_close(loaded.module(x), model(x))


@pytest.mark.parametrize(
    "content,code",
    [
        (b"", "empty-file"),
        (np.random.default_rng(0).bytes(2048), "unsupported-format"),
        (b"just some text that is not a model\n" * 10, "unsupported-format"),
        (b"PK\x03\x04 not really a zip", "unsupported-format"),
    ],
    ids=["empty", "random", "text", "broken-zip"],
)
def test_random_empty_and_garbage_files_are_rejected_with_named_codes(tmp_path, content, code):
    path = tmp_path / "upload"
    path.write_bytes(content)
    err = _reject(path, architecture="resnet20")
    assert err.code == code and str(err)


def test_a_truncated_onnx_file_is_rejected_as_invalid_onnx(tmp_path):
    model, shape = make_model("convbn")
    full = export(model, shape, tmp_path / "full.onnx", "legacy", 13).read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(full[: len(full) // 2])
    assert _reject(path).code == "invalid-onnx"


def test_a_truncated_safetensors_file_is_rejected_as_invalid_safetensors(tmp_path):
    full = tmp_path / "full.safetensors"
    save_file(zoo.build("mnist1d_cnn").state_dict(), str(full))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(full.read_bytes()[:-100])
    assert _reject(path, architecture="mnist1d_cnn").code == "invalid-safetensors"


def _safetensors_bytes(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


LYING_HEADERS = {
    "length-past-end": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10**6),
    "length-huge": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 2**62),
    "offsets-out-of-range": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4096]}}, b"\0" * 8, None),
    "shape-times-dtype-mismatch": (
        {"a": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 8]}},
        b"\0" * 8,
        None,
    ),
    "overlapping": (
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
        None,
    ),
    "gap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None),
    "unknown-dtype": ({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16, None),
    "negative-dim": ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None),
    "not-json": (None, b"", None),
}


@pytest.mark.parametrize("case", sorted(LYING_HEADERS))
def test_a_lying_safetensors_header_is_rejected(tmp_path, case):
    header, data, header_len = LYING_HEADERS[case]
    path = tmp_path / "w.safetensors"
    if header is None:
        path.write_bytes(struct.pack("<Q", 6) + b"{nope}" + b"\0" * 4)
    else:
        path.write_bytes(_safetensors_bytes(header, data, header_len))
    err = _reject(path, architecture="mnist1d_cnn")
    assert err.code == "invalid-safetensors"


def test_safetensors_weights_load_into_the_named_architecture(tmp_path):
    torch.manual_seed(0)
    model = zoo.build("mnist1d_cnn", num_classes=7).eval()
    path = tmp_path / "weights"
    save_file(model.state_dict(), str(path))
    assert sniff(path) == "safetensors"
    loaded = load_model(path, architecture="mnist1d_cnn")
    assert loaded.format == "safetensors" and loaded.input_shape == (1, 40)
    x = torch.randn(4, 1, 40)
    torch.testing.assert_close(loaded.module.eval()(x), model(x))
    assert _reject(path).code == "architecture-required"
    assert _reject(path, architecture="resnet20").code == "weights-mismatch"


def test_an_onnx_upload_reports_its_input_shape(tmp_path):
    model, shape = make_model("residual")
    path = export(model, shape, tmp_path / "m", "legacy", 17)
    assert sniff(path) == "onnx"
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.input_shape == shape


def test_inspection_reports_parameters_macs_prunable_layers_and_no_blockers():
    model = zoo.build("resnet20", width=0.5)
    report = inspect_model(model, (3, 32, 32))
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["macs"] > report["parameters"]
    names = [layer["name"] for layer in report["prunable_layers"]]
    assert "conv1" in names and names[-1] == "fc"
    assert report["prunable_layers"][0]["out_channels"] == 8
    assert report["blockers"] == [] and report["channel_prunable"]


def test_inspection_reports_a_reshape_with_a_hard_coded_channel_count_as_a_blocker(tmp_path):
    class Hard(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            y = self.conv(x).reshape(x.shape[0], 8, 16)  # channel count baked into the graph
            return self.fc(y).mean(1)

    model = Hard().eval()
    path = export(model, (3, 4, 4), tmp_path / "hard.onnx", "legacy", 17, dynamic=False)
    loaded = load_model(path)
    assert loaded.module(torch.randn(5, 3, 4, 4)).shape == (5, 4)  # the batch is no longer hard-coded
    report = inspect_model(loaded.module, (3, 4, 4))
    assert not report["channel_prunable"]
    assert any("conv" in b["node"].lower() or "reshape" in b["reason"] for b in report["blockers"])
