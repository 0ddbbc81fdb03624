"""ONNX intake: both torch exporters, opsets 13–21, graph fixes, and hostile files."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from service.core.intake import Rejected
from tests.worker.io.conftest import EXPORTS, MODELS, export, make_model
from worker.io.onnx import load_onnx, prepare_for_torch, read_onnx


def _outputs_match(gm: nn.Module, model: nn.Module, shape: tuple[int, ...], batch: int) -> None:
    x = torch.randn(batch, *shape)
    with torch.no_grad():
        torch.testing.assert_close(gm.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter,opset", EXPORTS)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_onnx_from_both_exporters_converts_to_a_graph_with_the_same_outputs(onnx_files, kind, exporter, opset):
    model, shape, path = onnx_files(kind, exporter, opset)
    gm = load_onnx(path)
    assert isinstance(gm, torch.fx.GraphModule)
    for batch in (1, 7):
        _outputs_match(gm, model, shape, batch)
    assert all(p.requires_grad for p in gm.parameters())
    assert any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in gm.modules())


@pytest.mark.parametrize("opset", range(13, 22))
def test_every_opset_from_13_to_21_converts_the_residual_net(onnx_files, opset):
    model, shape, path = onnx_files("residual", "legacy" if opset <= 17 else "dynamo", opset)
    assert onnx.load(str(path)).opset_import[0].version == opset
    _outputs_match(load_onnx(path), model, shape, 3)


@pytest.mark.parametrize("exporter,opset", [("legacy", 13), ("dynamo", 18)])
def test_a_batchnorm_graph_keeps_trainable_batchnorm_and_gradients_reach_conv_and_bn(onnx_files, exporter, opset):
    model, shape, path = onnx_files("convbn", exporter, opset, train=True)
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    gm = load_onnx(path)
    bns = [m for m in gm.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert len(bns) == 2 and len(convs) == 2
    _outputs_match(gm, model, shape, 3)  # eval mode: running statistics were carried over
    gm.train()
    before = bns[0].running_mean.clone()
    x = torch.randn(6, *shape)
    loss = nn.functional.cross_entropy(gm(x), torch.randint(0, 10, (6,)))
    loss.backward()
    assert not torch.equal(bns[0].running_mean, before)  # batch statistics in train mode
    for module in convs + bns:
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1)
    weight = convs[0].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(convs[0].weight, weight)


def test_an_eval_mode_export_with_folded_batchnorm_still_trains(onnx_files):
    _, shape, path = onnx_files("convbn", "dynamo", 18)
    gm = load_onnx(path).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    gm(torch.randn(4, *shape)).sum().backward()
    assert all(m.weight.grad is not None for m in gm.modules() if isinstance(m, nn.Conv2d))


def _prune_last_conv(gm: nn.Module, shape: tuple[int, ...], count: int) -> nn.Conv2d:
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    graph = tp.DependencyGraph().build_dependency(gm.eval(), example_inputs=torch.randn(1, *shape))
    group = graph.get_pruning_group(convs[-1], tp.prune_conv_out_channels, idxs=list(range(count)))
    group.prune()
    return convs[-1]


@pytest.mark.parametrize("exporter,opset", [("legacy", 13), ("dynamo", 18)])
def test_a_constant_reshape_after_pooling_becomes_a_flatten_that_survives_channel_pruning(tmp_path, exporter, opset):
    model, shape = make_model("convbn")
    path = export(model, shape, tmp_path / "static.onnx", exporter, opset, dynamic=False)  # batch 2 baked in
    reshapes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Reshape"]
    assert reshapes, "the exporter should have written a Reshape"
    gm = load_onnx(path)
    assert any(isinstance(m, nn.Flatten) for m in gm.modules())
    for batch in (1, 7):
        _outputs_match(gm, model, shape, batch)
    conv = _prune_last_conv(gm, shape, 4)
    assert conv.out_channels == 12
    linear = [m for m in gm.modules() if isinstance(m, nn.Linear)][-1]
    assert linear.in_features == 12 * 2 * 2
    for batch in (1, 7):
        assert gm(torch.randn(batch, *shape)).shape == (batch, 10)


def _graph_model(nodes, inputs, outputs, initializers, opset=21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _tensor(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_a_hand_written_reshape_to_one_by_512_after_global_pool_runs_at_any_batch(tmp_path):
    rng = np.random.default_rng(0)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="reshape_1x16"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    inits = [
        _tensor("w", rng.standard_normal((16, 3, 3, 3)).astype(np.float32)),
        _tensor("shape", np.array([1, 16], dtype=np.int64)),
        _tensor("fc_w", rng.standard_normal((4, 16)).astype(np.float32)),
        _tensor("fc_b", rng.standard_normal(4).astype(np.float32)),
    ]
    path = _save(_graph_model(nodes, [x_info], [y_info], inits), tmp_path / "m.onnx")
    gm = load_onnx(path).eval()
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(gm(torch.from_numpy(x)).detach().numpy(), _ort(path, x), rtol=1e-4, atol=1e-5)
    assert gm(torch.randn(7, 3, 8, 8)).shape == (7, 4)
    conv = _prune_last_conv(gm, (3, 8, 8), 6)
    assert conv.out_channels == 10
    assert gm(torch.randn(5, 3, 8, 8)).shape == (5, 4)


def test_shared_initializers_are_untied_so_each_layer_owns_its_parameters(tmp_path):
    rng = np.random.default_rng(1)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c1"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "ones", "zeros", "zeros", "ones"], ["n1"], name="bn_a"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu_a"),
        helper.make_node("Conv", ["r1", "w", "b"], ["c2"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "ones", "zeros", "zeros", "ones"], ["y"], name="bn_b"),
    ]
    inits = [
        _tensor("w", rng.standard_normal((4, 4, 3, 3)).astype(np.float32)),
        _tensor("b", rng.standard_normal(4).astype(np.float32)),
        _tensor("ones", np.ones(4, np.float32)),
        _tensor("zeros", np.zeros(4, np.float32)),
    ]
    path = _save(_graph_model(nodes, [x_info], [y_info], inits, opset=15), tmp_path / "shared.onnx")
    prepared, stats = prepare_for_torch(read_onnx(path))
    assert stats["untied_initializers"] > 0
    gm = load_onnx(path)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(gm.eval()(torch.from_numpy(x)).detach().numpy(), _ort(path, x), rtol=1e-4, atol=1e-4)
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in gm.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 2 and len(bns) == 2
    storages = {p.data_ptr() for p in gm.parameters()} | {
        b.data_ptr() for m in bns for b in (m.running_mean, m.running_var)
    }
    assert len(storages) == len(list(gm.parameters())) + 4
    with torch.no_grad():
        convs[0].weight.add_(1.0)
        bns[0].running_var.mul_(2.0)
    assert not torch.equal(convs[0].weight, convs[1].weight)
    assert not torch.equal(bns[0].running_var, bns[1].running_var)
    graph = tp.DependencyGraph().build_dependency(gm.eval(), example_inputs=torch.randn(1, 4, 6, 6))
    graph.get_pruning_group(convs[0], tp.prune_conv_out_channels, idxs=[0]).prune()
    assert gm(torch.randn(3, 4, 6, 6)).shape == (3, 4, 6, 6)


def test_a_layer_reused_twice_by_the_legacy_exporter_converts_to_two_owned_layers(tmp_path):
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(self.conv(x)))

    torch.manual_seed(0)
    model = Reuse().eval()
    path = export(model, (4, 6, 6), tmp_path / "reuse.onnx", "legacy", 17)
    gm = load_onnx(path)
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and convs[0].weight.data_ptr() != convs[1].weight.data_ptr()
    _outputs_match(gm, model, (4, 6, 6), 3)


def test_weights_held_in_constant_nodes_and_computed_biases_become_parameters(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 5, 5])
    nodes = [
        helper.make_node("Constant", [], ["w"], name="weight_const", value=_tensor("w", w)),
        helper.make_node("Shape", ["w"], ["wshape"], name="shape", start=0, end=1),
        helper.make_node("Constant", [], ["zero"], name="zero", value=_tensor("zero", np.array(0.0, np.float32))),
        helper.make_node("CastLike", ["zero", "x"], ["zero_like"], name="castlike"),
        helper.make_node("Expand", ["zero_like", "wshape"], ["bias"], name="expand"),
        helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    path = _save(_graph_model(nodes, [x_info], [y_info], [], opset=18), tmp_path / "const.onnx")
    gm = load_onnx(path)
    conv = next(m for m in gm.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(conv.weight, nn.Parameter) and conv.bias is not None
    x = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(gm.eval()(torch.from_numpy(x)).detach().numpy(), _ort(path, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", [2, 3])
def test_matmul_with_a_constant_weight_becomes_a_trainable_linear(tmp_path, rank):
    rng = np.random.default_rng(3)
    dims = ["N", 6] if rank == 2 else ["N", 3, 6]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims[:-1] + [4])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="add"),
    ]
    inits = [
        _tensor("w", rng.standard_normal((6, 4)).astype(np.float32)),
        _tensor("b", rng.standard_normal(4).astype(np.float32)),
    ]
    path = _save(_graph_model(nodes, [x_info], [y_info], inits, opset=18), tmp_path / "mm.onnx")
    gm = load_onnx(path)
    linears = [m for m in gm.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 6 and linears[0].out_features == 4
    x = rng.standard_normal((2, 6) if rank == 2 else (2, 3, 6)).astype(np.float32)
    np.testing.assert_allclose(gm.eval()(torch.from_numpy(x)).detach().numpy(), _ort(path, x), rtol=1e-4, atol=1e-5)


def _single_op_case(op: str, opset: int):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    inits, extra, outputs, attrs, out_shape = [], [], ["y"], {}, None
    if op in ("ReduceMean", "ReduceMax", "ReduceL2"):
        inits, extra, attrs = [_tensor("axes", np.array([2, 3], np.int64))], ["axes"], {"keepdims": 0}
        out_shape = [2, 4]
    elif op == "Split":
        outputs, attrs, out_shape = ["y", "y2"], {"axis": 1, "num_outputs": 2}, [2, 2, 6, 6]
    elif op == "Pad":
        inits = [_tensor("pads", np.array([1, 2, 1, 2], np.int64)), _tensor("axes", np.array([2, 3], np.int64))]
        extra, attrs, out_shape = ["pads", "", "axes"], {"mode": "reflect"}, [2, 4, 8, 10]
    elif op == "AveragePool":
        attrs, out_shape = {"kernel_shape": [2, 2], "strides": [2, 2]}, [2, 4, 3, 3]
    node = helper.make_node(op, ["x"] + extra, outputs, name=f"{op.lower()}_node", **attrs)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))
    out_infos = [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shape) for o in outputs]
    return _graph_model([node], [x_info], out_infos, inits, opset=opset), x


@pytest.mark.parametrize(
    "op,opset",
    [
        ("ReduceMean", 18),
        ("ReduceMax", 18),
        ("ReduceL2", 18),
        ("ReduceMax", 20),
        ("Split", 18),
        ("Pad", 18),
        ("Pad", 21),
        ("AveragePool", 19),
    ],
)
def test_opset_18_to_21_nodes_onnx2torch_lacks_convert_like_onnxruntime_runs_them(tmp_path, op, opset):
    model, x = _single_op_case(op, opset)
    path = _save(model, tmp_path / f"{op}.onnx")
    gm = load_onnx(path)
    got = gm(torch.from_numpy(x))
    got = got[0] if isinstance(got, (tuple, list)) else got
    np.testing.assert_allclose(got.detach().numpy(), _ort(path, x), rtol=1e-5, atol=1e-5)


def test_an_unsupported_operator_is_rejected_naming_the_op_and_the_node(tmp_path):
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Hardmax", ["x"], ["y"], name="my_hardmax_node")
    path = _save(_graph_model([node], [x_info], [y_info], [], opset=13), tmp_path / "hardmax.onnx")
    with pytest.raises(Rejected) as err:
        load_onnx(path)
    assert err.value.code == "unsupported-operator"
    assert "Hardmax" in str(err.value) and "my_hardmax_node" in str(err.value)


def test_detection_postprocessing_is_rejected_because_torchvision_is_absent(tmp_path):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 5, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 5])
    out = helper.make_tensor_value_info("sel", TensorProto.INT64, ["K", 3])
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"], name="nms_node")
    path = _save(_graph_model([node], [boxes, scores], [out], [], opset=13), tmp_path / "nms.onnx")
    with pytest.raises(Rejected) as err:
        load_onnx(path)
    assert err.value.code == "unsupported-operator" and "NonMaxSuppression" in str(err.value)
    assert importlib.util.find_spec("torchvision") is None  # the import stub did not leak


# ------------------------------------------------------------------ external data and limits


def _external_model(tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    """A conv model whose weight lives in ``weights.bin`` next to it."""
    rng = np.random.default_rng(5)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    model = _graph_model(
        [node], [x_info], [y_info], [_tensor("w", rng.standard_normal((3, 2, 3, 3)).astype(np.float32))]
    )
    upload = tmp_path / "upload"
    upload.mkdir()
    path = upload / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path, onnx.load_model(str(path), load_external_data=False)


def _point_external_data(path: Path, model: onnx.ModelProto, location: str) -> None:
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, str(path))


def test_external_data_inside_the_upload_directory_loads(tmp_path):
    path, _ = _external_model(tmp_path)
    gm = load_onnx(path)
    x = np.random.default_rng(6).standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(gm.eval()(torch.from_numpy(x)).detach().numpy(), _ort(path, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["absolute", "parent", "nested-parent", "symlink"])
def test_external_data_pointing_outside_the_upload_is_rejected(tmp_path, how):
    path, model = _external_model(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((path.parent / "weights.bin").read_bytes())
    if how == "absolute":
        location = str(secret)
    elif how == "parent":
        location = "../secret.bin"
    elif how == "nested-parent":
        location = "sub/../../secret.bin"
    else:
        os.symlink(secret, path.parent / "link.bin")
        location = "link.bin"
    _point_external_data(path, model, location)
    with pytest.raises(Rejected) as err:
        load_onnx(path)
    assert err.value.code == "external-data-outside-upload"


def test_a_file_over_the_protobuf_limit_is_rejected_before_parsing(tmp_path):
    path = tmp_path / "huge.onnx"
    with path.open("wb") as handle:
        handle.truncate(2**31 + 16)  # sparse: no disk space used
    with pytest.raises(Rejected) as err:
        load_onnx(path)
    assert err.value.code == "model-too-large" and "2 GiB" in str(err.value)


def test_external_data_beyond_the_protobuf_limit_is_rejected_before_reading(tmp_path):
    path, model = _external_model(tmp_path)
    data = path.parent / "weights.bin"
    with data.open("r+b") as handle:
        handle.truncate(2**31 + 64)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = str(2**31 + 64)
    onnx.save_model(model, str(path))
    with pytest.raises(Rejected) as err:
        load_onnx(path)
    assert err.value.code == "model-too-large"


def test_bytes_that_are_not_onnx_are_rejected_as_invalid_onnx(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(Rejected) as err:
        load_onnx(path)
    assert err.value.code == "invalid-onnx"
