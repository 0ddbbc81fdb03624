"""Spline scores (data space and weight space) and the baseline importances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.worker.pruning.tiny import MLP, ConvBN2d, DepthwiseSeparable, randomize_bn
from worker.pruning.criteria.bn_scale import bn_scale_scores
from worker.pruning.criteria.l1 import l1_scores
from worker.pruning.criteria.random import random_scores
from worker.pruning.layers import discover_layers
from worker.pruning.regions import RegionCodes, compute_region_codes
from worker.pruning.scoring import (
    fold_bn,
    greedy_removal,
    spline_geometry_scores,
    spline_layer_scores,
    spline_scores,
    streamed_spline_scores,
)


def crafted_mlp() -> tuple[nn.Module, torch.Tensor]:
    """fc1 unit 1 duplicates unit 3 (weights x2, same split), unit 5 is dead (never on),
    unit 7 is always on; the other units cut the probe cloud through its middle."""
    torch.manual_seed(0)
    model = MLP(inputs=16, hidden=10)
    with torch.no_grad():
        w, b = model.fc1.weight, model.fc1.bias
        w.copy_(torch.randn_like(w))
        b.zero_()
        w[1] = 2 * w[3]
        b[5] = -100.0
        b[7] = 100.0
    return model, torch.randn(256, 1, 16)


def test_spline_scores_rank_a_duplicated_unit_and_a_dead_unit_lowest():
    model, probes = crafted_mlp()
    codes = compute_region_codes(model, probes, discover_layers(model))
    scores = spline_scores(codes)["fc1"]
    assert scores.shape == (10,) and scores.dtype == torch.float32
    lowest = set(torch.argsort(scores)[:4].tolist())
    assert lowest == {1, 3, 5, 7}
    assert torch.all(scores[[1, 3, 5, 7]] == 0)
    others = [k for k in range(10) if k not in lowest]
    assert torch.all(scores[others] > 0) and torch.all(scores <= 0.5)


@pytest.mark.parametrize("redundancy", ["greedy", "pairwise"])
def test_streamed_spline_scores_equal_the_scores_of_the_stored_codes_exactly(redundancy):
    torch.manual_seed(3)
    model = ConvBN2d(channels=6)
    randomize_bn(model)
    probes = torch.randn(100, 1, 8, 8)  # batches of 32: three full ones and a partial one
    layers = discover_layers(model)
    codes = compute_region_codes(model, probes, layers, max_positions=16, seed=2, batch_size=32)
    expected = spline_scores(codes, redundancy)
    streamed = streamed_spline_scores(model, probes, layers, 16, 2, redundancy, batch_size=32)
    assert set(streamed) == set(expected) and len(expected) == len(layers)
    for name in expected:
        assert torch.equal(streamed[name], expected[name]), name


def test_spline_scores_match_a_float_reference():
    rng = np.random.default_rng(0)
    bits = rng.random((6, 70)) < rng.random((6, 1))
    bits[4] = ~bits[2]  # the opposite split is redundant too
    codes = RegionCodes(np.packbits(bits, axis=1), 6, 70, 70, 1)
    q = bits.astype(float)
    activity = q.mean(1)
    expected = []
    for k in range(6):
        h = [np.mean(q[k] != q[j]) for j in range(6) if j != k]
        r = min(min(x, 1 - x) for x in h)
        expected.append(min(min(activity[k], 1 - activity[k]), r))
    np.testing.assert_allclose(spline_layer_scores(codes).numpy(), expected, atol=1e-6)
    assert spline_layer_scores(codes)[2] == 0 and spline_layer_scores(codes)[4] == 0


def test_spline_scores_are_exact_over_several_matmul_chunks():
    rng = np.random.default_rng(1)
    m = 8192 * 8 + 77  # one full chunk plus a partial one
    bits = rng.random((3, m)) > 0.5
    codes = RegionCodes(np.packbits(bits, axis=1), 3, m, m, 1)
    ham01 = np.mean(bits[0] != bits[1])
    ham02 = np.mean(bits[0] != bits[2])
    act = bits[0].mean()
    expected = min(min(act, 1 - act), min(ham01, 1 - ham01), min(ham02, 1 - ham02))
    assert spline_layer_scores(codes)[0].item() == pytest.approx(expected, abs=1e-6)


def test_spline_geometry_scores_rank_a_duplicated_unit_and_a_dead_unit_lowest():
    model, probes = crafted_mlp()
    layers = discover_layers(model)
    scores = spline_geometry_scores(model, layers, probes)["fc1"]
    assert torch.all((scores >= 0) & (scores <= 0.5))
    assert set(torch.argsort(scores)[:4].tolist()) == {1, 3, 5, 7}
    assert scores[1] < 1e-3 and scores[3] < 1e-3 and scores[5] < 1e-6 and scores[7] < 1e-6


def test_bn_folding_reproduces_the_bn_output_in_eval_mode():
    torch.manual_seed(0)
    model = randomize_bn(ConvBN2d()).eval()
    layer = discover_layers(model)[0]
    normals, offsets = fold_bn(layer)
    x = torch.randn(4, 1, 8, 8)
    folded = nn.functional.conv2d(x, normals.reshape(model.conv1.weight.shape), offsets, padding=1)
    with torch.no_grad():
        assert torch.allclose(folded, model.bn1(model.conv1(x)), atol=1e-5)


def test_geometry_scores_cover_depthwise_layers_and_stay_in_range():
    torch.manual_seed(0)
    model = randomize_bn(DepthwiseSeparable())
    layers = discover_layers(model)
    scores = spline_geometry_scores(model, layers, torch.randn(32, 1, 8, 8))
    assert set(scores) == {layer.name for layer in layers}
    for name, s in scores.items():
        assert s.shape == (dict((layer.name, layer.out_features) for layer in layers)[name],)
        assert torch.all((s >= 0) & (s <= 0.5)), name


def test_baseline_scores_are_filter_norms_bn_scales_and_seeded_noise():
    torch.manual_seed(0)
    model = randomize_bn(ConvBN2d())
    layers = discover_layers(model)
    l1 = l1_scores(layers)
    assert torch.allclose(l1["conv2"], model.conv2.weight.abs().sum(dim=(1, 2, 3)))
    bn = bn_scale_scores(layers)
    assert set(bn) == {"conv1", "conv2"}  # fc has no BN
    assert torch.equal(bn["conv1"], model.bn1.weight.detach().abs())
    r1, r2, r3 = random_scores(layers, 1), random_scores(layers, 1), random_scores(layers, 2)
    assert all(torch.equal(r1[n], r2[n]) for n in r1)
    assert not torch.equal(r1["conv1"], r3["conv1"])


def test_greedy_redundancy_prunes_one_unit_of_a_duplicated_pair_not_both():
    model, probes = crafted_mlp()
    codes = compute_region_codes(model, probes, discover_layers(model))["fc1"]
    pairwise = spline_layer_scores(codes)
    greedy = spline_layer_scores(codes, "greedy")
    assert pairwise[1] == 0 and pairwise[3] == 0  # the known weakness: both twins look free
    # greedy: the dead and always-on units and ONE twin go first at score 0; the other twin
    # is scored against the kept units only and is no longer redundant
    assert sorted(torch.argsort(greedy, stable=True)[:3].tolist()) == [1, 5, 7]
    assert greedy[1] == 0 and greedy[3] > 0.05
    assert torch.all(greedy >= pairwise - 1e-7) and torch.all(greedy <= 0.5)


def test_greedy_removal_scores_are_non_decreasing_along_the_removal_order():
    rng = np.random.default_rng(3)
    bits = rng.random((12, 400)) < rng.random((12, 1))
    bits[5] = bits[2]
    bits[9] = ~bits[2]
    codes = RegionCodes(np.packbits(bits, axis=1), 12, 400, 400, 1)
    activity = bits.mean(1)
    iso = np.minimum(activity, 1 - activity)
    ham = (bits[:, None, :] != bits[None, :, :]).mean(2)
    order, scores = greedy_removal(iso, np.minimum(ham, 1 - ham))
    assert sorted(order.tolist()) == list(range(12))
    assert np.all(np.diff(scores[order]) >= 0)
    # a stable sort by score reproduces the greedy order (what allocate() relies on)
    assert np.array_equal(np.argsort(scores, kind="stable"), order)
    np.testing.assert_allclose(spline_layer_scores(codes, "greedy").numpy(), scores, atol=1e-6)
    # exactly one of the three copies of unit 2's split is removed at score 0
    assert sum(scores[k] == 0 for k in (2, 5, 9)) == 2 and scores[[2, 5, 9]].max() > 0


def test_greedy_geometry_scores_keep_one_of_two_parallel_hyperplanes():
    model, probes = crafted_mlp()
    layers = discover_layers(model)
    pairwise = spline_geometry_scores(model, layers, probes)["fc1"]
    greedy = spline_geometry_scores(model, layers, probes, redundancy="greedy")["fc1"]
    assert pairwise[1] < 1e-3 and pairwise[3] < 1e-3
    assert min(greedy[1], greedy[3]) < 1e-3 < max(greedy[1], greedy[3])
