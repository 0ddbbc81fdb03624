"""What real pretrained ONNX files need, on tiny hand-built graphs: old BatchNormalization,
GlobalMaxPool, symbolic input sizes, batch constants, computed reshape targets, per-channel
constants, and an export that keeps the original signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from service.core.intake import Rejected
from worker.export import check_onnx_parity, export_onnx, onnx_export_info
from worker.io.data import DataSplits
from worker.io.models import inspect_model, inspect_upload, load_model
from worker.io.onnx import load_onnx
from worker.pruning.channels import prune_channels
from worker.pruning.custom_layers import ChannelConstant

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, opset: int, ir: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="handmade")
    model.ir_version = ir
    onnx.checker.check_model(model)
    return model


def _init(name: str, shape: tuple[int, ...], positive: bool = False) -> TensorProto:
    value = RNG.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(value) + 0.5 if positive else value, name)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def _ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _conv_bn_net(opset: int, bn_attrs: dict, dims: list) -> onnx.ModelProto:
    """x → Conv(3→8) → BatchNormalization → Relu → GlobalMaxPool → Flatten → Gemm(8→4)."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["n"], **bn_attrs),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("GlobalMaxPool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    inits = [
        _init("w", (8, 3, 3, 3)),
        _init("b", (8,)),
        _init("s", (8,)),
        _init("o", (8,)),
        _init("m", (8,)),
        _init("v", (8,), positive=True),
        _init("fw", (4, 8)),
        _init("fb", (4,)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 4])
    return _model(nodes, [x], [y], inits, opset)


@pytest.mark.parametrize("opset", [7, 9])
def test_an_opset_7_or_9_batchnorm_with_spatial_and_a_global_max_pool_convert_like_onnxruntime(tmp_path, opset):
    attrs = {"epsilon": 1e-5, **({"spatial": 1} if opset == 7 else {})}
    path = _save(_conv_bn_net(opset, attrs, ["N", 3, 8, 8]), tmp_path / "old.onnx")
    gm = load_onnx(path, input_shape=(3, 8, 8)).eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in gm.modules())
    x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(gm(torch.from_numpy(x)).numpy(), _ort(path, x)[0], rtol=1e-4, atol=1e-5)


def test_a_per_activation_batchnorm_is_refused_naming_the_operator(tmp_path):
    path = _save(_conv_bn_net(7, {"spatial": 0}, ["N", 3, 8, 8]), tmp_path / "spatial0.onnx")
    with pytest.raises(Rejected) as err:
        load_onnx(path, input_shape=(3, 8, 8))
    assert err.value.code == "unsupported-operator" and "BatchNormalization" in str(err.value)
    assert "spatial=0" in str(err.value)


def test_an_upload_with_symbolic_height_and_width_is_accepted_and_sized_later_by_a_job(tmp_path):
    path = _save(_conv_bn_net(13, {}, ["batch", 3, "height", "width"]), tmp_path / "sym.onnx")
    info = inspect_upload(path)
    assert info["input_shape"] is None and info["channel_prunable"] is None
    assert info["io"]["inputs"][0]["dims"] == ["batch", 3, "height", "width"]
    assert "height" in info["note"] and "dataset" in info["note"]
    static = inspect_upload(_save(_conv_bn_net(13, {}, ["N", 3, 8, 8]), tmp_path / "static.onnx"))
    assert static["input_shape"] == [3, 8, 8] and static["channel_prunable"] is True


def test_an_upload_with_symbolic_dims_still_has_its_operator_types_checked(tmp_path):
    model = _conv_bn_net(13, {}, ["batch", 3, "height", "width"])
    model.graph.node.append(helper.make_node("Hardmax", ["logits"], ["hard"]))  # no converter exists
    model.graph.output.append(helper.make_tensor_value_info("hard", TensorProto.FLOAT, ["batch", 4]))
    with pytest.raises(Rejected) as err:
        inspect_upload(_save(model, tmp_path / "hardmax.onnx"))
    assert err.value.code == "unsupported-operator" and "Hardmax" in str(err.value)


def test_symbolic_height_and_width_need_an_input_shape_and_convert_with_one(tmp_path):
    path = _save(_conv_bn_net(13, {}, ["batch", 3, "height", "width"]), tmp_path / "sym.onnx")
    with pytest.raises(Rejected) as err:
        load_model(path)
    assert err.value.code == "input-shape-required" and "input_shape" in str(err.value)
    loaded = load_model(path, input_shape=(3, 16, 12))
    assert loaded.input_shape == (3, 16, 12)
    assert loaded.details["io"]["inputs"][0]["dims"] == ["batch", 3, "height", "width"]
    with pytest.raises(Rejected) as err:
        load_model(path, input_shape=(1, 16, 12))
    assert err.value.code == "input-shape-mismatch"
    assert "takes samples of shape [3, '?', '?']" in str(err.value) and "have shape [1, 16, 12]" in str(err.value)


def _paddle_style_head(batch_dim) -> onnx.ModelProto:
    """Conv → Mul/Add by [1, C, 1, 1] constants → GlobalAveragePool → Shape/Slice/Concat → Reshape
    (a reshape target computed at run time, as paddle2onnx writes it) → Gemm, plus a second output."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Mul", ["c1", "scale"], ["s1"]),
        helper.make_node("Add", ["bias", "s1"], ["a1"]),
        helper.make_node("HardSwish", ["a1"], ["h1"]),
        helper.make_node("Conv", ["h1", "w2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["pool"]),
        helper.make_node("Shape", ["pool"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch_only"]),
        helper.make_node("Concat", ["batch_only", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["pool", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["scores"], transB=1),
        helper.make_node("Sigmoid", ["c2"], ["heatmap"]),
    ]
    inits = [
        _init("w1", (8, 3, 3, 3)),
        _init("scale", (1, 8, 1, 1)),
        _init("bias", (1, 8, 1, 1)),
        _init("w2", (6, 8, 1, 1)),
        _init("fw", (5, 6)),
        _init("fb", (5,)),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch_dim, 3, 10, 10])
    nodes[0].input[0] = "image"
    outs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch_dim, 5]),
        helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, [batch_dim, 6, 10, 10]),
    ]
    return _model(nodes, [x], outs, inits, 14)


def _inputs_only(shape: tuple[int, ...], n: int = 12) -> DataSplits:
    x = torch.randn(n, *shape)
    y = torch.zeros(n, dtype=torch.long)
    return DataSplits(x_train=x[:8], y_train=y[:8], x_val=x[8:], y_val=y[8:], num_classes=1)


@pytest.mark.parametrize("batch_dim", [1, "N"])
def test_a_paddle_style_graph_is_pruned_and_exported_with_its_names_and_a_dynamic_batch(tmp_path, batch_dim):
    path = _save(_paddle_style_head(batch_dim), tmp_path / "paddle.onnx")
    loaded = load_model(path)
    module = loaded.module
    constants = [m for m in module.modules() if isinstance(m, ChannelConstant)]
    assert len(constants) == 2 and all(c.value.numel() == 8 for c in constants)
    x = np.random.default_rng(1).standard_normal((3, 3, 10, 10)).astype(np.float32)
    reference = x[:1] if batch_dim == 1 else x  # the uploaded file only runs at the batch it pins
    with torch.no_grad():
        ours = module.eval()(torch.from_numpy(reference))
    for got, want in zip(ours, _ort(path, reference), strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)

    report = inspect_model(module, loaded.input_shape)
    assert report["channel_prunable"]
    excluded = {e["node"]: e["reason"] for e in report["excluded"]}
    # the 1x1 conv (heatmap channels) and the Gemm (scores) shape outputs; the first conv is free
    assert len(excluded) == 2 and all("reach a model output" in reason for reason in excluded.values())

    result = prune_channels(module, _inputs_only(loaded.input_shape), criterion="l1", ratio=0.5, exclude=())
    assert result.channels_after[result.coupled[0][0]] < 8  # the first conv lost channels
    assert all(c.value.numel() == result.channels_after[result.coupled[0][0]] for c in constants)
    assert set(excluded) <= set(result.excluded) and "Conv_1" in result.blocked

    out = export_onnx(module, torch.from_numpy(x[:2]), tmp_path / "pruned.onnx")
    info = onnx_export_info(out)
    assert info["inputs"] == ["image"] and info["outputs"] == ["scores", "heatmap"]
    assert info["dynamic_batch"] and info["signature"]["dtypes_kept"]
    parity = check_onnx_parity(module, out, torch.randn(5, 3, 10, 10))
    assert parity["passed"] and [o["name"] for o in parity["outputs"]] == ["scores", "heatmap"]
    assert [o.shape[0] for o in _ort(out, x[:1])] == [1, 1]


def test_a_model_whose_every_set_reaches_an_output_is_refused_naming_the_blockers(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4, 4])],
        [_init("w", (8, 3, 1, 1))],
        13,
    )
    loaded = load_model(_save(model, tmp_path / "one.onnx"))
    report = inspect_model(loaded.module, loaded.input_shape)
    assert not report["channel_prunable"] and "output" in report["blockers"][0]["reason"]


def test_parity_is_checked_on_every_output_and_fails_when_one_differs(tmp_path):
    path = _save(_paddle_style_head("N"), tmp_path / "two.onnx")
    module = load_model(path).module
    out = export_onnx(module, torch.randn(2, 3, 10, 10), tmp_path / "exported.onnx")
    with torch.no_grad():
        next(
            m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 6
        ).bias = torch.nn.Parameter(torch.ones(6))  # the torch model now differs in both outputs
    parity = check_onnx_parity(module, out, torch.randn(3, 3, 10, 10))
    assert not parity["passed"] and len(parity["outputs"]) == 2


def _c2f_block() -> onnx.ModelProto:
    """A YOLOv8 C2f block: Conv → Split into two halves, the second half read by a bottleneck
    Conv *and* the Concat (a piece with two consumers) → Concat → Conv → Sigmoid output."""
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Split", ["c1", "halves"], ["p0", "p1"], axis=1),
        helper.make_node("Conv", ["p1", "wm"], ["m1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["m1"], ["r1"]),
        helper.make_node("Conv", ["r1", "wm2"], ["m2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Concat", ["p0", "p1", "m2"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["c2"], ["boxes"]),
    ]
    inits = [
        _init("w1", (8, 3, 3, 3)),
        numpy_helper.from_array(np.array([4, 4], np.int64), "halves"),
        _init("wm", (6, 4, 3, 3)),
        _init("wm2", (4, 6, 3, 3)),
        _init("w2", (5, 12, 1, 1)),
    ]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 10, 10])
    y = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 5, 10, 10])
    return _model(nodes, [x], [y], inits, 13)


def test_a_yolov8_style_split_with_a_piece_read_twice_is_partially_pruned_like_onnxruntime(tmp_path):
    path = _save(_c2f_block(), tmp_path / "c2f.onnx")
    loaded = load_model(path)
    module = loaded.module.eval()
    x = np.random.default_rng(2).standard_normal((3, 3, 10, 10)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), _ort(path, x)[0], rtol=1e-4, atol=1e-5)

    report = inspect_model(module, loaded.input_shape)
    assert report["channel_prunable"]  # the dependency graph builds despite the shared piece
    result = prune_channels(module, _inputs_only(loaded.input_shape), criterion="l1", ratio=0.5, exclude=())
    widths = {n: m.out_channels for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)}
    # the bottleneck's convs (6 → 3, 4 → 2: the Concat follows) lost channels; the split conv and the output did not
    assert sorted(widths.values()) == [2, 3, 5, 8]
    assert result.blocked  # the split conv (constant halves) and the output conv are excluded, named

    out = export_onnx(module, torch.from_numpy(x[:2]), tmp_path / "pruned.onnx")
    info = onnx_export_info(out)
    assert info["inputs"] == ["image"] and info["outputs"] == ["boxes"] and info["dynamic_batch"]
    assert check_onnx_parity(module, out, torch.randn(3, 3, 10, 10))["passed"]


def test_a_computed_reshape_of_a_rank_one_value_keeps_its_target_instead_of_becoming_a_flatten(tmp_path):
    nodes = [
        helper.make_node("ReduceSum", ["x", "axis"], ["total"], keepdims=0),
        helper.make_node("Shape", ["total"], ["shape"]),
        helper.make_node("Concat", ["shape", "one"], ["target"], axis=0),
        helper.make_node("Reshape", ["total", "target"], ["column"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("column", TensorProto.FLOAT, ["N", 1])],
        inits,
        13,
    )
    path = _save(model, tmp_path / "column.onnx")
    module = load_model(path).module.eval()
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got, _ort(path, x)[0], rtol=1e-5, atol=1e-5)
