"""Region codes: bit-packed, equal to a float reference, distances on packed bytes."""

from __future__ import annotations

import numpy as np
import torch

from tests.worker.pruning.tiny import MLP, ConvBN1d, ConvBN2d, make_data, randomize_bn
from worker.pruning.layers import discover_layers
from worker.pruning.regions import (
    RegionCodes,
    code_distance,
    compute_region_codes,
    network_distance,
    select_probes,
)


def float_reference(model, probes, module):
    """(units, probes*positions) bools of module(x) > 0, probe-major, from a plain hook."""
    out = []
    handle = module.register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    model.eval()
    with torch.no_grad():
        model(probes)
    handle.remove()
    h = out[0]
    h = h.flatten(2) if h.dim() > 2 else h.unsqueeze(-1)
    return (h > 0).permute(1, 0, 2).reshape(h.shape[1], -1).numpy()


def test_region_codes_are_bit_packed_and_match_a_float_reference():
    torch.manual_seed(0)
    model = randomize_bn(ConvBN1d())
    probes = torch.randn(37, 1, 16)  # neither the probe count nor the batch a multiple of 8
    layers = discover_layers(model)
    codes = compute_region_codes(model, probes, layers, max_positions=64, batch_size=10)
    conv1 = codes["conv1"]
    assert conv1.packed.dtype == np.uint8
    assert conv1.units == 8 and conv1.positions == 16 and conv1.bits == 37 * 16
    assert conv1.packed.shape == (8, (37 * 16 + 7) // 8)
    np.testing.assert_array_equal(conv1.unpack(), float_reference(model, probes, model.bn1))
    np.testing.assert_array_equal(codes["fc"].unpack(), float_reference(model, probes, model.fc))
    np.testing.assert_array_equal(conv1.unpack(3), conv1.unpack()[3])
    assert codes["fc"].positions == 1


def test_codes_read_the_bn_output_not_the_raw_convolution():
    torch.manual_seed(0)
    model = randomize_bn(ConvBN1d())
    with torch.no_grad():
        model.bn1.bias.fill_(-0.5)  # makes BN output and conv output disagree in sign
    probes = torch.randn(16, 1, 16)
    codes = compute_region_codes(model, probes, discover_layers(model))["conv1"].unpack()
    np.testing.assert_array_equal(codes, float_reference(model, probes, model.bn1))
    assert (codes != float_reference(model, probes, model.conv1)).any()


def test_spatial_positions_are_subsampled_with_a_fixed_seed():
    torch.manual_seed(0)
    model = randomize_bn(ConvBN2d())
    probes = torch.randn(8, 1, 8, 8)
    layers = discover_layers(model)
    a = compute_region_codes(model, probes, layers, max_positions=10, seed=1)
    b = compute_region_codes(model, probes, layers, max_positions=10, seed=1)
    assert a["conv1"].positions == 10 and a["conv1"].bits == 80
    assert a["conv2"].positions == 10  # 4x4 = 16 positions, subsampled too
    np.testing.assert_array_equal(a["conv1"].packed, b["conv1"].packed)
    full = float_reference(model, probes, model.bn1).reshape(6, 8, 64)
    picked = a["conv1"].unpack().reshape(6, 8, 10)
    # every subsampled column is one of the real positions, the same for all probes
    cols = [next(p for p in range(64) if (full[:, :, p] == picked[:, :, j]).all()) for j in range(10)]
    assert len(cols) == 10


def test_code_distance_is_zero_for_identical_models_and_positive_after_perturbation():
    torch.manual_seed(0)
    model = MLP()
    probes = torch.randn(64, 1, 16)
    layers = discover_layers(model)
    before = compute_region_codes(model, probes, layers)
    again = compute_region_codes(model, probes, layers)
    assert network_distance(before, again) == 0.0
    with torch.no_grad():
        model.fc1.weight.add_(torch.randn_like(model.fc1.weight))
    after = compute_region_codes(model, probes, discover_layers(model))
    assert code_distance(before["fc1"], after["fc1"]) > 0
    assert 0 < network_distance(before, after) <= 1


def test_code_distance_is_the_fraction_of_differing_bits():
    rng = np.random.default_rng(0)
    a_bits = rng.random((5, 21)) > 0.5
    b_bits = rng.random((5, 21)) > 0.5
    a = RegionCodes(np.packbits(a_bits, axis=1), 5, 21, 21, 1)
    b = RegionCodes(np.packbits(b_bits, axis=1), 5, 21, 21, 1)
    assert code_distance(a, b) == (a_bits != b_bits).mean()
    np.testing.assert_allclose(a.activity(), a_bits.mean(axis=1))


def test_region_codes_survive_a_state_dict_round_trip():
    rng = np.random.default_rng(1)
    codes = RegionCodes(np.packbits(rng.random((3, 30)) > 0.5, axis=1), 3, 30, 30, 1)
    back = RegionCodes.from_state_dict(codes.state_dict())
    assert code_distance(codes, back) == 0.0 and back.bits == 30


def test_probe_selection_is_deterministic_and_blends_inputs_of_different_classes():
    data = make_data((1, 16), n_train=100)
    a = select_probes(data.x_train, n=20, seed=3, y=data.y_train)
    b = select_probes(data.x_train, n=20, seed=3, y=data.y_train)
    assert torch.equal(a, b) and a.shape == (20, 1, 16)
    # probes are training rows
    assert all(any(torch.equal(p, x) for x in data.x_train) for p in a)
    blended = select_probes(data.x_train, n=20, seed=3, blend=6, y=data.y_train)
    assert blended.shape == (26, 1, 16) and torch.equal(blended[:20], a)
    assert not any(any(torch.equal(p, x) for x in data.x_train) for p in blended[20:])
    assert select_probes(data.x_train, n=1000).shape[0] == 100
