"""Physical channel removal with Torch-Pruning: sizes, coupling, ONNX round trips."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.worker.pruning.tiny import (
    MLP,
    ConvBN2d,
    DepthwiseSeparable,
    TinyResNet,
    make_data,
    onnx_bytes,
    randomize_bn,
    to_graph_module,
)
from worker.pruning.channels import CRITERIA, coupled_sets, prune_channels, remove_channels
from worker.pruning.layers import discover_layers
from worker.pruning.training import count_macs_params

IMAGES = make_data((1, 8, 8), n_train=64, n_val=16)
SIGNALS = make_data((1, 16), n_train=64, n_val=16)


def onnxruntime_matches(model: nn.Module, x: torch.Tensor) -> bool:
    model.eval()
    session = ort.InferenceSession(onnx_bytes(model, x[:1]), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    return np.allclose(got, want, atol=1e-4)


def test_removing_channels_lowers_params_and_macs_by_the_expected_amount_and_keeps_the_output_shape():
    torch.manual_seed(0)
    model = randomize_bn(ConvBN2d(channels=6))
    x = torch.randn(2, 1, 8, 8)
    macs, params = count_macs_params(model, x)
    remove_channels(model, x[:1], {"conv1": torch.tensor([1, 4])})
    macs_after, params_after = count_macs_params(model, x)
    assert model.conv1.out_channels == 4 and model.bn1.num_features == 4 and model.conv2.in_channels == 4
    # conv1: 2 filters of 1x3x3 + 2 biases; bn1: 2 scales + 2 shifts; conv2: 8 filters lose 2 input maps of 3x3
    assert params - params_after == 2 * 9 + 2 + 4 + 8 * 2 * 9
    # conv1: 2 maps of 8x8 positions x 9; conv2: 8 maps of 4x4 positions x 2 inputs x 9
    assert macs - macs_after == 2 * 64 * 9 + 8 * 16 * 2 * 9
    assert model(x).shape == (2, 3)


def test_removing_dead_units_leaves_the_outputs_unchanged():
    torch.manual_seed(0)
    model = MLP(inputs=16, hidden=10)
    with torch.no_grad():
        model.fc1.bias[[2, 7]] = -1e4  # never active after the ReLU
    x = torch.randn(8, 1, 16)
    before = model(x).detach()
    remove_channels(model, x[:1], {"fc1": torch.tensor([2, 7])})
    assert model.fc1.out_features == 8 and model.fc2.in_features == 8
    assert torch.allclose(model(x), before, atol=1e-6)


def test_residual_adds_are_coupled_and_the_group_root_plan_wins():
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    x = torch.randn(2, 1, 8, 8)
    sets = coupled_sets(model, x[:1])
    assert ["stem", "a2"] in sets and ["b2", "short"] in sets and ["a1"] in sets
    remove_channels(
        model, x[:1], {"stem": torch.tensor([0, 1]), "a2": torch.tensor([5, 6, 7]), "b2": torch.tensor([3])}
    )
    assert model.stem.out_channels == model.a2.out_channels == 6  # a2 followed stem's plan
    assert model.a1.in_channels == 6 and model.b1.in_channels == 6 and model.short.in_channels == 6
    assert model.b2.out_channels == model.short.out_channels == 11 and model.fc.in_features == 11
    assert model(x).shape == (2, 3)


def test_depthwise_convolutions_shrink_with_the_layer_that_feeds_them():
    torch.manual_seed(0)
    model = randomize_bn(DepthwiseSeparable())
    x = torch.randn(2, 1, 8, 8)
    assert ["stem", "dw"] in coupled_sets(model, x[:1])
    remove_channels(model, x[:1], {"stem": torch.tensor([0, 3, 5])})
    assert model.dw.out_channels == model.dw.groups == 5 and model.pw.in_channels == 5
    assert model(x).shape == (2, 3)


def test_plans_that_empty_a_layer_or_name_unknown_layers_are_refused():
    model = ConvBN2d()
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown"):
        remove_channels(model, x, {"nope": torch.tensor([0])})
    with pytest.raises(ValueError, match="every channel"):
        remove_channels(model, x, {"conv1": torch.arange(6)})


@pytest.mark.parametrize("criterion", CRITERIA)
def test_prune_channels_reports_every_layer_and_never_prunes_the_classifier(criterion):
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    result = prune_channels(model, IMAGES, criterion=criterion, ratio=0.5, exclude=(), probes_n=32)
    names = [layer.name for layer in discover_layers(model)]
    assert list(result.channels_before) == names
    assert result.channels_after["fc"] == 3 and "fc" in result.excluded
    assert result.params_after < result.params_before and result.macs_after < result.macs_before
    # coupled layers end up with equal widths
    assert result.channels_after["stem"] == result.channels_after["a2"]
    assert result.channels_after["b2"] == result.channels_after["short"]
    assert set(result.plan) <= {"stem", "a1", "b1", "b2"}  # only roots are allocated
    assert model(IMAGES.x_val).shape == (16, 3)
    rows = result.layer_table()
    assert all(r["before"] - r["after"] == r["removed"] >= 0 for r in rows)


def test_prune_channels_honours_exclude_and_ratio_in_layerwise_scope():
    torch.manual_seed(0)
    model = randomize_bn(ConvBN2d(channels=6))
    result = prune_channels(
        model, IMAGES, criterion="spline", ratio=0.5, scope="layerwise", exclude=["conv2"], probes_n=32
    )
    assert result.channels_after == {"conv1": 3, "conv2": 8, "fc": 3}


def test_bn_scale_refuses_a_model_without_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm"):
        prune_channels(MLP(), SIGNALS, criterion="bn_scale", ratio=0.5)


def test_a_pruned_model_still_exports_to_onnx_and_matches_onnxruntime():
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    prune_channels(model, IMAGES, criterion="spline", ratio=0.4, probes_n=32)
    assert onnxruntime_matches(model, IMAGES.x_val[:5])


def test_onnx2torch_graph_modules_are_pruned_and_still_export():
    torch.manual_seed(0)
    dense = randomize_bn(TinyResNet()).eval()
    graph = to_graph_module(dense, IMAGES.x_train[:1])
    with torch.no_grad():
        assert torch.allclose(graph(IMAGES.x_val), dense(IMAGES.x_val), atol=1e-5)
    result = prune_channels(graph, IMAGES, criterion="spline", ratio=0.5, probes_n=32)
    assert ["stem/Conv", "a2/Conv"] in result.coupled
    after = result.channels_after
    assert after["stem/Conv"] == after["a2/Conv"] < 8 or after["b1/Conv"] < 12
    assert result.params_after < result.params_before
    assert graph(IMAGES.x_val).shape == (16, 3)
    assert onnxruntime_matches(graph, IMAGES.x_val[:5])


@torch.no_grad()
def test_mean_replacement_makes_removing_a_constant_unit_exact_for_a_linear_consumer():
    torch.manual_seed(0)
    model = MLP(inputs=16, hidden=12).eval()
    model.fc1.weight[4] = 0.0
    model.fc1.bias[4] = 0.8  # always on, constant 0.8: fc2 sees it as a bias
    x = torch.randn(128, 1, 16)
    reference = model(x)
    plain = remove_channels(copy.deepcopy(model), x[:1], {"fc1": torch.tensor([4])})
    compensated = remove_channels(copy.deepcopy(model), x[:1], {"fc1": torch.tensor([4])}, compensate_probes=x)
    assert (plain(x) - reference).abs().max() > 0.05
    assert torch.allclose(compensated(x), reference, atol=1e-5)
    assert compensated.fc2.in_features == 11


@torch.no_grad()
def test_mean_replacement_goes_through_flatten_and_into_a_following_batchnorm():
    torch.manual_seed(0)
    model = randomize_bn(ConvBN2d()).eval()
    model.conv2.weight[3] = 0.0
    model.conv2.bias[3] = 0.0
    model.bn2.bias[3] = 1.5  # conv2 channel 3 is the constant 1.5 after BN + ReLU
    x = IMAGES.x_train
    reference = model(x)
    compensated = remove_channels(copy.deepcopy(model), x[:1], {"conv2": torch.tensor([3])}, compensate_probes=x)
    assert compensated.fc.in_features == 7 * 4  # flatten of 2x2 pooled maps: 4 features removed
    assert torch.allclose(compensated(x), reference, atol=1e-5)
    # a conv consumer followed by a BN is compensated through the BN's running mean
    model.conv1.weight[2] = 0.0
    model.conv1.bias[2] = 0.0
    model.bn1.bias[2] = 2.0
    reference = model(x)
    before = model.bn2.running_mean.clone()
    plain = remove_channels(copy.deepcopy(model), x[:1], {"conv1": torch.tensor([2])})
    compensated = remove_channels(copy.deepcopy(model), x[:1], {"conv1": torch.tensor([2])}, compensate_probes=x)
    assert compensated.conv2.bias is not None and not torch.equal(compensated.bn2.running_mean, before)
    assert (compensated(x) - reference).pow(2).mean() < 0.25 * (plain(x) - reference).pow(2).mean()
