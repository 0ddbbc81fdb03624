"""Discovery of prunable layers and their BatchNorms; exclude names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.worker.pruning.tiny import MLP, ConvBN2d, TinyResNet, randomize_bn, to_graph_module
from worker.pruning.layers import discover_layers, resolve_excludes


def test_layers_are_listed_in_execution_order_with_the_bn_that_consumes_them():
    layers = discover_layers(TinyResNet())
    assert [layer.name for layer in layers] == ["stem", "a1", "a2", "b1", "b2", "short", "fc"]
    model = TinyResNet()
    by_name = {layer.name: layer for layer in discover_layers(model)}
    assert by_name["a1"].bn is model.a1_bn and by_name["short"].bn is model.short_bn
    assert by_name["fc"].bn is None
    assert by_name["b1"].out_features == 12 and by_name["fc"].out_features == 3


def test_a_model_without_batchnorm_has_layers_without_bn():
    layers = discover_layers(MLP())
    assert [(layer.name, layer.bn) for layer in layers] == [("fc1", None), ("fc2", None), ("fc3", None)]


class Untraceable(nn.Module):
    """Data-dependent control flow defeats symbolic tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if h.sum() > 0:
            h = h * 2
        return self.fc(h.mean(2))


def test_untraceable_models_fall_back_to_module_order():
    model = Untraceable()
    layers = discover_layers(model)
    assert [layer.name for layer in layers] == ["conv", "fc"]
    assert layers[0].bn is model.bn


def test_onnx2torch_graph_modules_are_read_from_their_own_graph():
    model = randomize_bn(ConvBN2d()).eval()
    graph = to_graph_module(model, torch.zeros(1, 1, 8, 8))
    layers = discover_layers(graph)
    assert [layer.out_features for layer in layers] == [6, 8, 3]
    assert all(isinstance(layer.module, (nn.Conv2d, nn.Linear)) for layer in layers)


def test_excludes_accept_literal_names_and_first_and_last():
    model = TinyResNet()
    assert resolve_excludes(model, ["first", "last", "b2"]) == {"stem", "fc", "b2"}
    assert resolve_excludes(model, []) == set()
    with pytest.raises(ValueError, match="prunable layers"):
        resolve_excludes(model, ["nope"])


def test_onnx2torch_graphs_exported_with_their_batchnorms_keep_them_attached():
    import io
    import warnings

    import onnx

    from tests.worker.pruning.tiny import stub_torchvision

    stub_torchvision()
    import onnx2torch

    model = randomize_bn(ConvBN2d()).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            buf,
            dynamo=False,
            opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )
    graph = onnx2torch.convert(onnx.load_from_string(buf.getvalue()))
    layers = discover_layers(graph)
    assert [isinstance(layer.bn, nn.BatchNorm2d) for layer in layers] == [True, True, False]
    assert layers[0].bn_name is not None and dict(graph.named_modules())[layers[0].bn_name] is layers[0].bn
