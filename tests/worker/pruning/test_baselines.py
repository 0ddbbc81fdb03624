"""Unstructured baselines: global magnitude and random pruning via torch.nn.utils.prune."""

from __future__ import annotations

import torch

from tests.worker.pruning.tiny import MLP, ConvBN2d
from worker.pruning.baselines import global_magnitude_prune, random_unstructured_prune


def weights(model, names):
    modules = dict(model.named_modules())
    return {n: modules[n].weight.detach() for n in names}


def test_global_magnitude_pruning_zeroes_the_smallest_weights_of_all_layers_together():
    torch.manual_seed(0)
    model = ConvBN2d()
    original = {n: w.clone() for n, w in weights(model, ["conv1", "conv2", "fc"]).items()}
    masks = global_magnitude_prune(model, 0.6)
    assert set(masks) == {"conv1", "conv2", "fc"}
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total)
    removed = torch.cat([original[n][~m].abs() for n, m in masks.items()])
    kept = torch.cat([original[n][m].abs() for n, m in masks.items()])
    assert removed.max() <= kept.min()
    current = weights(model, masks)
    assert all(torch.equal(current[n] != 0, masks[n]) for n in masks)
    # the pruning is permanent: plain parameters, no masks or hooks left behind
    assert not any(name.endswith(("_orig", "_mask")) for name, _ in model.named_parameters())
    assert not any(name.endswith("_mask") for name, _ in model.named_buffers())
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_random_pruning_is_seeded_global_and_leaves_the_global_rng_alone():
    def run(seed):
        torch.manual_seed(0)
        model = MLP()
        return random_unstructured_prune(model, 0.5, exclude=["last"], seed=seed)

    a, b, c = run(1), run(1), run(2)
    assert set(a) == {"fc1", "fc2"}
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    total = sum(m.numel() for m in a.values())
    assert sum(int((~m).sum()) for m in a.values()) == round(0.5 * total)

    model = MLP()
    state = torch.get_rng_state()
    random_unstructured_prune(model, 0.5, seed=3)
    after = torch.rand(1)
    torch.set_rng_state(state)
    assert torch.equal(after, torch.rand(1))
