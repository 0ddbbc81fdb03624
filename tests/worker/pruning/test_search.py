"""The ratio searches on monotone bounds whose answer is known."""

from __future__ import annotations

import pytest

from worker.pruning.search import search_cost, search_quality


def test_a_quality_search_finds_the_largest_ratio_within_the_bound_to_its_resolution():
    result = search_quality(lambda r: {"passed": r <= 0.6}, candidates=5, max_ratio=0.9)
    assert [p["ratio"] for p in result.points][0] == 0.5  # starts at the fixed default
    assert len(result.points) == 5
    assert 0.6 - 1 / 32 < result.chosen <= 0.6
    assert result.chosen == max(p["ratio"] for p in result.points if p["passed"])


def test_a_quality_search_stops_at_max_ratio_when_everything_passes_and_finds_nothing_when_nothing_does():
    everything = search_quality(lambda r: {"passed": True}, candidates=5, max_ratio=0.7)
    assert everything.chosen == 0.7 and everything.points[-1]["ratio"] == 0.7
    nothing = search_quality(lambda r: {"passed": False}, candidates=3, max_ratio=0.9)
    assert nothing.chosen is None and [p["ratio"] for p in nothing.points] == [0.5, 0.25, 0.125]


def test_a_cost_search_finds_the_smallest_ratio_that_meets_the_bound():
    result = search_cost(lambda r: {"passed": r >= 0.37}, max_ratio=0.9, resolution=0.01)
    assert result.points[0]["ratio"] == 0.9
    assert 0.37 <= result.chosen < 0.37 + 0.01
    assert all(p["passed"] == (p["ratio"] >= 0.37) for p in result.points)


def test_a_cost_search_reports_an_unreachable_bound_and_a_dense_model_that_already_meets_it():
    assert search_cost(lambda r: {"passed": False}, max_ratio=0.8).chosen is None
    already = search_cost(lambda r: pytest.fail("nothing to evaluate"), max_ratio=0.8, dense_passes=True)
    assert already.chosen == 0.0 and already.points == []
