"""A job on an ONNX file with symbolic spatial dims: the dataset's sample shape resolves them,
partial pruning excludes what it must, the report says so, and the pruned ONNX keeps the
uploaded model's input/output names with a dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.core.spec import JobSpec
from worker.export import onnx_export_info
from worker.pipeline import PipelineInputs, run_pipeline


def _symbolic_digits_classifier(path) -> None:
    """x[N, 1, H, W] → Conv(1→8) → Mul by [1, 8, 1, 1] → Relu → GlobalAveragePool → Flatten → Gemm(8→10)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["pixels", "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Mul", ["c", "scale"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["class_scores"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in [("w", (8, 1, 3, 3)), ("scale", (1, 8, 1, 1)), ("fw", (10, 8)), ("fb", (10,))]
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("class_scores", TensorProto.FLOAT, ["n", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def test_a_symbolic_onnx_job_takes_the_dataset_shape_and_keeps_the_uploaded_signature(tmp_path):
    _symbolic_digits_classifier(tmp_path / "model.onnx")
    spec = JobSpec.model_validate(
        {
            "dataset": {"builtin": "digits"},
            "pipeline": [{"prune_channels": {"criterion": "l1", "ratio": 0.5}}],
            "export": {"formats": ["onnx"]},
        }
    )
    outcome = run_pipeline(
        PipelineInputs(model_path=tmp_path / "model.onnx", builtin_dataset="digits"), spec, tmp_path / "out"
    )
    info = onnx_export_info(outcome.files["model.onnx"])
    assert info["inputs"] == ["pixels"] and info["outputs"] == ["class_scores"] and info["dynamic_batch"]
    report = json.loads(outcome.files["report.json"].read_text())
    assert report["model"]["input_shape"] == [1, 8, 8]
    assert report["exports"]["onnx"]["passed"]
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert isinstance(report["structure"]["excluded_from_pruning"], list)
