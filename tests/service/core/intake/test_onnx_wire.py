"""ONNX structure and opsets are checked from the wire format at upload."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from service.core.intake import MAX_ONNX_OPSET, Rejected, check_model_file
from tests.factories import tiny_onnx_bytes


def _model(tmp_path: Path, opset: int, domain: str = "") -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("opset", [99, MAX_ONNX_OPSET + 1, 0])
def test_an_opset_no_onnx_release_defines_is_refused_naming_it(tmp_path, opset) -> None:
    with pytest.raises(Rejected) as refused:
        check_model_file(_model(tmp_path, opset), allow_torchscript=False)
    assert refused.value.code == "unsupported-opset" and f"opset {opset}" in str(refused.value)


@pytest.mark.parametrize("domain", ["", "ai.onnx"])
def test_the_newest_defined_opset_passes_in_either_default_domain_spelling(tmp_path, domain) -> None:
    assert check_model_file(_model(tmp_path, MAX_ONNX_OPSET, domain), allow_torchscript=False) == "onnx"


def test_the_opset_ceiling_follows_the_pinned_onnx_release() -> None:
    assert MAX_ONNX_OPSET == onnx.defs.onnx_opset_version()


def test_an_onnx_file_over_the_protobuf_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    """Sending 2 GiB through a test is impractical; the API's check runs on the stored size
    (a sparse file here) before any parsing."""
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as stream:
        stream.write(tiny_onnx_bytes())
        stream.truncate(2 << 30)
    with pytest.raises(Rejected) as refused:
        check_model_file(path, allow_torchscript=False)
    assert refused.value.code == "model-too-large"


def test_onnx_from_torch_exporters_passes_the_structural_check(tmp_path: Path) -> None:
    """No false refusals: real exports (legacy and dynamo exporters) pass the API's check."""
    import torch

    from tests.worker.io.conftest import Residual

    for cls in (Residual,):
        for dynamo in (False, True):
            path = tmp_path / f"{cls.__name__}-{dynamo}.onnx"
            options = {"external_data": False} if dynamo else {"dynamic_axes": {"x": {0: "batch"}}}
            torch.onnx.export(
                cls().eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=dynamo, input_names=["x"], **options
            )
            assert check_model_file(path, allow_torchscript=False) == "onnx"
