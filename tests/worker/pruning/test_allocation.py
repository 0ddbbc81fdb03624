"""Allocation of the channels to remove: global vs layerwise, guard rails."""

from __future__ import annotations

import pytest
import torch

from worker.pruning.allocation import allocate


def scores_with_a_weak_layer() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "strong": 1.0 + torch.rand(16, generator=gen),
        "weak": 0.1 * torch.rand(16, generator=gen),
        "mixed": torch.cat([0.5 * torch.ones(4), 2.0 * torch.ones(12)]),
    }


def test_layerwise_scope_removes_the_same_ratio_of_lowest_scores_in_every_layer():
    scores = scores_with_a_weak_layer()
    plan = allocate(scores, 0.25, "layerwise")
    assert {n: len(p) for n, p in plan.items()} == {"strong": 4, "weak": 4, "mixed": 4}
    for name, idx in plan.items():
        kept = torch.ones(16, dtype=torch.bool)
        kept[idx] = False
        assert scores[name][idx].max() <= scores[name][kept].min()
    assert plan["mixed"].tolist() == [0, 1, 2, 3]


def test_global_scope_removes_the_lowest_scores_of_the_whole_pool():
    scores = scores_with_a_weak_layer()
    plan = allocate(scores, 0.25, "global")  # 12 of 48
    assert sum(len(p) for p in plan.values()) == 12
    assert len(plan["strong"]) == 0 and len(plan["weak"]) == 12
    removed = torch.cat([scores[n][p] for n, p in plan.items()])
    kept = torch.cat([scores[n][[i for i in range(16) if i not in set(p.tolist())]] for n, p in plan.items()])
    assert removed.max() <= kept.min()


def test_min_channels_is_respected_and_the_rest_of_the_budget_goes_elsewhere():
    scores = scores_with_a_weak_layer()
    plan = allocate(scores, 0.5, "global", min_channels=6)  # 24 of 48, "weak" may lose only 10
    assert len(plan["weak"]) == 10
    assert sum(len(p) for p in plan.values()) == 24
    assert all(16 - len(p) >= 6 for p in plan.values())
    layerwise = allocate({"tiny": torch.rand(3)}, 0.9, "layerwise", min_channels=2)
    assert len(layerwise["tiny"]) == 1


def test_round_to_rounds_kept_counts_up_to_a_multiple():
    scores = {"a": torch.rand(20), "b": torch.rand(16), "c": torch.rand(6)}
    for scope in ("global", "layerwise"):
        plan = allocate(scores, 0.6, scope, round_to=8)
        for name, idx in plan.items():
            width = scores[name].numel()
            kept = width - len(idx)
            assert kept % 8 == 0 or kept == width, (scope, name, kept)
            assert kept >= 1
        assert allocate(scores, 0.6, scope)["a"].numel() >= plan["a"].numel()  # rounding keeps more


def test_no_ratio_removes_nothing_and_bad_arguments_are_refused():
    scores = scores_with_a_weak_layer()
    assert all(len(p) == 0 for p in allocate(scores, 0.0, "global").values())
    assert all(p.dtype == torch.long for p in allocate(scores, 0.3, "global").values())
    with pytest.raises(ValueError):
        allocate(scores, 1.0, "global")
    with pytest.raises(ValueError):
        allocate(scores, 0.5, "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        allocate(scores, 0.5, "global", min_channels=0)


def test_per_layer_floors_stop_a_weak_layer_from_collapsing():
    scores = scores_with_a_weak_layer()
    plain = allocate(scores, 0.5, "global")
    assert 16 - len(plain["weak"]) == 1  # the whole weak layer goes but one channel
    floored = allocate(scores, 0.5, "global", floors={"weak": 4})
    assert 16 - len(floored["weak"]) == 4
    assert sum(len(v) for v in floored.values()) == 24  # the budget moved elsewhere


def test_layerwise_keep_counts_override_the_ratio_for_the_named_layers_only():
    scores = {"a": torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 0.5]), "b": torch.arange(10.0)}
    plan = allocate(scores, 0.5, "layerwise", keep={"a": 4})
    assert plan["a"].tolist() == [1, 3, 6]  # the three lowest of a; it keeps 4
    assert plan["b"].tolist() == [0, 1, 2, 3, 4]  # the ratio's floor(0.5 × 10)
    with pytest.raises(ValueError, match="layerwise scope only"):
        allocate(scores, 0.5, "global", keep={"a": 4})
