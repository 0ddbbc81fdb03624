"""Exports are single-file with a dynamic batch, pass the checker, and match torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from worker.export import (
    check_onnx_parity,
    export_onnx,
    export_torchscript,
    file_sizes,
    onnx_export_info,
    onnxruntime_latency,
    save_masks,
)
from worker.io import zoo

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    model = zoo.build("resnet20", width=0.25)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # non-trivial BN statistics
    return model.eval()


@pytest.fixture(scope="module")
def exported(small_resnet, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    return export_onnx(small_resnet, torch.randn(1, 3, 32, 32), out / "model.onnx", opset=18)


def test_onnx_export_is_one_file_with_a_dynamic_batch_that_passes_the_checker(exported):
    assert [p.name for p in exported.parent.iterdir()] == ["model.onnx"]
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert not dim0.HasField("dim_value") and dim0.dim_param
    info = onnx_export_info(exported)
    assert info["exporter"] in ("dynamo", "legacy") and info["opset"] == 18 and info["dynamic_batch"]


def test_onnxruntime_matches_torch_at_batch_one_and_a_larger_batch(small_resnet, exported):
    parity = check_onnx_parity(small_resnet, exported, torch.randn(9, 3, 32, 32))
    assert parity["passed"] and parity["batch_sizes_checked"] == [1, 9]
    assert parity["max_abs_diff"] <= parity["tolerance"]


def test_parity_fails_when_the_file_does_not_match_the_model(small_resnet, exported):
    other = zoo.build("resnet20", width=0.25).eval()  # different random weights
    assert not check_onnx_parity(other, exported, torch.randn(4, 3, 32, 32))["passed"]


def test_a_model_the_dynamo_exporter_cannot_capture_falls_back_to_the_legacy_exporter(tmp_path):
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            if float(x.abs().sum()) >= 0:  # a Python branch on data: torch.export refuses it
                return self.fc(x)
            return -self.fc(x)

    model = DataDependent().eval()
    path = export_onnx(model, torch.randn(2, 6), tmp_path / "m.onnx", opset=17)
    info = onnx_export_info(path)
    assert info["exporter"] == "legacy" and info["dynamic_batch"] and info["single_file"]
    assert check_onnx_parity(model, path, torch.randn(5, 6))["passed"]


def test_a_model_converted_from_an_uploaded_onnx_file_is_exported_by_the_legacy_exporter_first(
    small_resnet, exported, tmp_path
):
    from worker.io.onnx.convert import load_onnx

    imported = load_onnx(exported).eval()  # an onnx2torch graph carrying the file's signature
    path = export_onnx(imported, torch.randn(2, 3, 32, 32), tmp_path / "again.onnx")
    assert onnx_export_info(path)["exporter"] == "legacy"
    assert check_onnx_parity(small_resnet, path, torch.randn(3, 3, 32, 32))["passed"]


def test_torchscript_export_reloads_and_matches_at_two_batch_sizes(small_resnet, tmp_path):
    result = export_torchscript(small_resnet, torch.randn(2, 3, 32, 32), tmp_path / "model.torchscript.pt")
    assert result["passed"] and result["method"] in ("trace", "script")
    assert len(result["batch_sizes_checked"]) == 2
    reloaded = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(reloaded(x), small_resnet(x))


def test_masks_are_saved_as_boolean_safetensors(tmp_path):
    masks = {"conv1.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "fc.weight": torch.ones(3, 2)}
    path = save_masks(masks, tmp_path / "masks.safetensors")
    loaded = load_file(str(path))
    assert loaded["conv1.weight"].dtype == torch.bool
    assert torch.equal(loaded["conv1.weight"], masks["conv1.weight"].bool())
    assert set(loaded) == set(masks)


def test_latency_is_measured_per_batch_size_single_threaded(exported):
    result = onnxruntime_latency(exported, (3, 32, 32), batch_sizes=(1, 4), repeats=3, warmup=1)
    assert set(result["batch_sizes"]) == {"1", "4"} and result["threads"] == 1
    for stats in result["batch_sizes"].values():
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] and stats["repeats"] == 3


def test_file_sizes_report_bytes_and_gzip_bytes(tmp_path, exported):
    zeros = tmp_path / "zeros.bin"
    zeros.write_bytes(b"\0" * 100_000)
    sizes = file_sizes(zeros)
    assert sizes["bytes"] == 100_000 and 0 < sizes["gzip_bytes"] < 1_000
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(10_000))
    assert file_sizes(noise)["gzip_bytes"] > 10_000 * 0.99
    assert file_sizes(exported)["bytes"] == exported.stat().st_size
