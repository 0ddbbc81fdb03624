"""The bounded latency estimator, on a fake clock (no wall-clock dependence)."""

from __future__ import annotations

import pytest

from worker.export.latency import bounded_latency, median_ci, summarize


class FakeClock:
    """A clock that advances only when the timed function 'runs' for a scripted duration."""

    def __init__(self, durations_s):
        self.now = 0.0
        self.durations = iter(durations_s)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.calls += 1
        self.now += next(self.durations)


def test_constant_run_times_stop_as_soon_as_min_repeats_are_done_and_are_stable():
    clock = FakeClock([0.01] * 100)
    result = bounded_latency(clock.run, min_repeats=5, max_repeats=50, warmup=1, budget_s=10, clock=clock)
    assert result["stable"] is True
    assert result["repeats"] == 5 and clock.calls == 6  # one warmup
    assert result["median_ms"] == pytest.approx(10.0) and result["ci_rel"] == pytest.approx(0.0)


def test_noisy_run_times_stop_at_the_time_budget_and_say_they_are_not_stable():
    noisy = [0.1, 0.3] * 100  # the median never settles within ±5%
    clock = FakeClock(noisy)
    result = bounded_latency(clock.run, min_repeats=5, max_repeats=1000, warmup=1, budget_s=2.0, clock=clock)
    assert result["stable"] is False
    assert result["seconds"] >= 2.0 and result["seconds"] <= 2.0 + 0.3  # one run past the budget at most
    assert result["ci_rel"] > 0.05
    assert result["repeats"] == clock.calls - 1


def test_the_repeat_cap_bounds_the_runs_when_time_is_plentiful():
    clock = FakeClock([0.1, 0.3] * 100)
    result = bounded_latency(clock.run, min_repeats=3, max_repeats=7, warmup=0, budget_s=1e9, clock=clock)
    assert result["repeats"] == 7 and clock.calls == 7 and result["stable"] is False


def test_a_run_longer_than_the_budget_is_still_measured_once():
    clock = FakeClock([5.0, 5.0, 5.0])
    result = bounded_latency(clock.run, min_repeats=5, warmup=1, budget_s=1.0, clock=clock)
    assert result["repeats"] == 1 and clock.calls == 2 and result["median_ms"] == pytest.approx(5000.0)


def test_the_median_interval_brackets_the_median_and_narrows_with_more_samples():
    few = sorted(float(v) for v in range(1, 10))
    many = sorted(float(v % 9 + 1) for v in range(900))
    lo, hi = median_ci(few)
    assert lo <= summarize(few)["median_ms"] <= hi
    assert summarize(many)["ci_rel"] < summarize(few)["ci_rel"]


def test_invalid_repeat_bounds_are_refused():
    with pytest.raises(ValueError):
        bounded_latency(lambda: None, min_repeats=5, max_repeats=2)
