"""Fidelity metrics: relative error, cosine and top-1 agreement, per output and headline."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from worker.pruning.fidelity import FidelityMeter, check_bounds, measure_fidelity
from worker.pruning.outputs import detect_kind, output_list, resolve_kinds


class TwoHeads(nn.Module):
    """A tiny 'detector': class scores (N, 3) and boxes (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 8)
        self.cls = nn.Linear(8, 3)
        self.box = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.cls(h), self.box(h)


def test_an_identical_model_has_fidelity_one_on_every_output():
    torch.manual_seed(0)
    model = TwoHeads()
    report = measure_fidelity(model, model, [torch.randn(16, 5), torch.randn(7, 5)], names=["scores", "boxes"])
    assert report["samples"] == 23
    assert report["fidelity"] == pytest.approx(1.0)
    scores, boxes = report["outputs"]["scores"], report["outputs"]["boxes"]
    assert scores["kind"] == "logits" and boxes["kind"] == "logits"  # (N, 4) reads as logits when undeclared
    assert scores["agreement"] == 1.0 and scores["relative_error"] == 0.0
    assert boxes["cosine"] == pytest.approx(1.0)


def test_relative_error_and_cosine_are_measured_over_the_whole_set():
    meter = FidelityMeter(kinds={"0": "regression"})
    ref = torch.tensor([[3.0, 4.0], [0.0, 5.0]])
    cand = torch.tensor([[3.0, 4.0], [0.0, -5.0]])  # second sample flipped: error 10 of norm sqrt(50)
    meter.update(ref, cand)
    out = meter.compute()["outputs"]["output_0"]
    assert out["relative_error"] == pytest.approx(10 / math.sqrt(50))
    assert out["cosine"] == pytest.approx(0.0)  # mean of 1 and -1
    assert out["agreement"] is None


def test_agreement_counts_pixels_of_a_dense_prediction_declared_as_logits():
    ref = torch.zeros(1, 2, 2, 2)
    ref[0, 0] = 1.0  # class 0 everywhere
    cand = ref.clone()
    cand[0, 1, 0, 0] = 5.0  # one pixel of four switches to class 1
    meter = FidelityMeter(names=["mask"], kinds={"mask": "logits"})
    meter.update(ref, cand)
    report = meter.compute()
    assert report["outputs"]["mask"]["agreement"] == pytest.approx(0.75)
    assert report["fidelity"] == pytest.approx(0.75)


def test_headline_fidelity_is_the_worst_output():
    meter = FidelityMeter(kinds={"0": "logits", "1": "regression"})
    logits = torch.eye(4)
    boxes = torch.ones(4, 4)
    meter.update((logits, boxes), (logits, boxes * 1.5))  # boxes off by 50 %
    report = meter.compute()
    assert report["outputs"]["output_0"]["agreement"] == 1.0
    assert report["outputs"]["output_1"]["relative_error"] == pytest.approx(0.5)
    assert report["fidelity"] == pytest.approx(0.5)


def test_outputs_in_dicts_and_nested_tuples_are_flattened_in_order():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert [float(t) for t in output_list({"x": a, "y": (b, [c])})] == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError):
        output_list("not a tensor")


def test_kinds_are_detected_or_declared_and_impossible_declarations_refused():
    assert detect_kind(torch.randn(2, 10)) == "logits"
    assert detect_kind(torch.randn(2, 1)) == "regression"
    assert detect_kind(torch.randn(2, 3, 8, 8)) == "regression"
    assert detect_kind(torch.zeros(2, 10, dtype=torch.int64)) == "regression"
    assert detect_kind(torch.rand(2, 1, 8, 8)) == "probabilities"  # a sigmoid map
    assert detect_kind(torch.softmax(torch.randn(2, 25, 40), dim=-1)) == "probabilities"
    assert detect_kind(torch.softmax(torch.randn(2, 10), dim=1)) == "logits"  # a classifier stays logits
    assert resolve_kinds([torch.randn(2, 6)], ["heat"], {"heat": "probabilities"}) == ["probabilities"]
    outs = [torch.randn(2, 3, 8, 8), torch.randn(2, 4)]
    assert resolve_kinds(outs, ["seg", "emb"], {"seg": "logits", "1": "regression"}) == ["logits", "regression"]
    with pytest.raises(ValueError, match="cannot be logits"):
        resolve_kinds([torch.randn(2, 1)], ["score"], {"score": "logits"})
    with pytest.raises(ValueError, match="outputs are"):
        resolve_kinds(outs, ["seg", "emb"], {"boxes": "regression"})


def test_bounds_pass_and_fail_on_the_worst_output():
    fidelity = {
        "outputs": {"a": {"agreement": 0.97, "relative_error": 0.02}, "b": {"agreement": None, "relative_error": 0.08}}
    }
    checks = check_bounds(fidelity, min_agreement=0.95, max_relative_error=0.05)
    assert checks["min_agreement"] == {"bound": 0.95, "measured": 0.97, "passed": True}
    assert checks["max_relative_error"]["measured"] == 0.08 and not checks["max_relative_error"]["passed"]
    assert check_bounds(fidelity, min_agreement=None, max_relative_error=None) == {}


def test_an_agreement_bound_without_logit_outputs_fails_with_a_reason():
    checks = check_bounds(
        {"outputs": {"a": {"agreement": None, "relative_error": 0.0}}}, min_agreement=0.9, max_relative_error=None
    )
    assert not checks["min_agreement"]["passed"]
    assert "logit-like" in checks["min_agreement"]["reason"]


def test_models_with_different_output_counts_are_an_error():
    meter = FidelityMeter()
    with pytest.raises(ValueError, match="outputs"):
        meter.update((torch.ones(2, 2), torch.ones(2, 2)), torch.ones(2, 2))
