"""report.json holds every figure of a job; report.html renders the plots and escapes text."""

from __future__ import annotations

import base64
import json
import math

import torch
import torch_pruning as tp

from worker.io import zoo
from worker.report import REPORT_FIELDS, build_report, layer_stats, write_report

EVIL = "<script>alert('x')</script>"


def _pruned_pair():
    dense = zoo.build("mnist1d_cnn")
    pruned = zoo.build("mnist1d_cnn")
    pruned.load_state_dict(dense.state_dict())
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=torch.randn(1, 1, 40))
    conv = pruned.features[0]
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(10))).prune()
    return dense, pruned


def _latency(ms: float) -> dict:
    return {"batch_sizes": {"1": {"median_ms": ms}, "32": {"median_ms": 10 * ms}}, "threads": 1}


def _report(**overrides):
    dense, pruned = _pruned_pair()
    layers = layer_stats(dense, pruned)
    layers[0]["name"] = EVIL  # user-controlled strings end up in the page
    kwargs = dict(
        accuracy_dense=90.0,
        accuracy_pruned=80.0,
        accuracy_finetuned=89.5,
        params_before=sum(p.numel() for p in dense.parameters()),
        params_after=sum(p.numel() for p in pruned.parameters()),
        macs_before=34_000,
        macs_after=20_000,
        file_size_before={"bytes": 30_000, "gzip_bytes": 20_000},
        file_size_after={"bytes": 15_000, "gzip_bytes": 10_000},
        latency_before=_latency(2.0),
        latency_after=_latency(1.0),
        layers=layers,
        channels_removed=True,
        early_bird={
            "detector": "spline",
            "found": True,
            "epoch": 4,
            "distances": [0.5, 0.3, 0.2, 0.1, 0.05],
            "threshold": 0.16,
        },
        training_curves={
            EVIL: {"epoch": [1, 2, 3], "train_loss": [2.0, 1.0, float("nan")], "val_accuracy": [50.0, 70.0, 80.0]}
        },
        timings={"early_bird": 1.5, "prune": 0.2, "finetune": 3.0},
        max_accuracy_drop=1.0,
        job_id="job_1",
        model={"name": EVIL},
        exports={"onnx": {"passed": True, "max_abs_diff": 1e-7}},
    )
    kwargs.update(overrides)
    return build_report(**kwargs)


def test_the_report_holds_every_figure_the_design_lists():
    report = _report()
    assert set(REPORT_FIELDS) <= set(report)
    assert report["accuracy"]["dense"] == 90.0 and report["accuracy"]["finetuned"] == 89.5
    assert report["accuracy"]["final"] == 89.5
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert 0 < report["parameters"]["ratio"] < 1
    assert report["macs"]["ratio"] == 20_000 / 34_000
    assert report["file_size"]["after"]["gzip_bytes"] == 10_000
    assert report["latency"]["speedup"] == {"1": 2.0, "32": 2.0}
    assert report["structure"]["channels_removed"] is True
    assert report["early_bird"]["epoch"] == 4 and len(report["early_bird"]["distances"]) == 5
    assert report["timings"]["total"] == 4.7
    assert {"torch", "onnx", "onnxruntime", "shears"} <= set(report["versions"])
    assert report["versions"]["torch"] == torch.__version__


def test_per_layer_rows_follow_the_physically_removed_channels():
    dense, pruned = _pruned_pair()
    rows = {row["name"]: row for row in layer_stats(dense, pruned)}
    assert rows["features.0"]["channels_before"] == 25 and rows["features.0"]["channels_after"] == 15
    assert rows["features.0"]["kept_fraction"] == 15 / 25
    assert rows["linear"]["channels_after"] == 10
    mask = torch.zeros(10, 125)
    mask[:, :25] = 1
    sparse = {row["name"]: row for row in layer_stats(dense, dense, {"linear.weight": mask})}
    assert sparse["linear"]["sparsity"] == 0.8 and sparse["features.0"]["sparsity"] == 0.0


def test_the_acceptance_verdict_compares_the_measured_drop_with_the_limit():
    assert _report()["acceptance"]["passed"]  # 0.5 points <= 1.0
    failing = _report(accuracy_finetuned=88.0)["acceptance"]
    assert not failing["passed"] and failing["measured_drop"] == 2.0 and failing["compared"] == "finetuned"
    no_finetune = _report(accuracy_finetuned=None, max_accuracy_drop=None)
    assert no_finetune["accuracy"]["final"] == 80.0 and no_finetune["acceptance"]["passed"]


def test_written_json_round_trips_and_the_html_embeds_plots_and_escapes_user_strings(tmp_path):
    report = _report()
    json_path, html_path = write_report(report, tmp_path)
    loaded = json.loads(json_path.read_text())
    assert set(REPORT_FIELDS) <= set(loaded)
    assert loaded["training_curves"][EVIL]["train_loss"][2] is None  # NaN → null, JSON stays valid
    assert not any(isinstance(v, float) and math.isnan(v) for v in loaded["training_curves"][EVIL]["train_loss"])
    page = html_path.read_text()
    assert EVIL not in page and "&lt;script&gt;" in page
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 3  # layers, training curves, early-bird distance
    for image in images:
        assert base64.b64decode(image.split('"', 1)[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "PASSED" in page


def _fidelity(rel: float, cosine: float) -> dict:
    output = {"kind": "probabilities", "shape": [1, 8, 8], "relative_error": rel, "cosine": cosine, "agreement": None}
    return {"outputs": {"text_map": output}, "fidelity": 1 - rel, "samples": 4}


def test_the_html_shows_each_outputs_fidelity_after_pruning_and_after_finetuning(tmp_path):
    report = _report(fidelity={"after_pruning": _fidelity(0.875, 0.125), "final": _fidelity(0.375, 0.625)})
    json_path, html_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["fidelity"]["after_pruning"]["outputs"]["text_map"]["cosine"] == 0.125
    page = html_path.read_text()
    section = page.split("Fidelity to the dense model")[1]
    assert "rel. error after finetuning" in section and "text_map" in section and "probabilities" in section
    for value in ("0.875", "0.375", "0.125", "0.625"):
        assert value in section


def _target(passed: bool) -> dict:
    point = {"macs_fraction": 0.5, "latency_ms": 1.0, "accuracy_pruned": 60.0, "accuracy": 89.0}
    return {
        "bound": "latency_ms",
        "value": 1.2,
        "batch": 8,
        "kind": "cost",
        "reference_accuracy": 90.0,
        "dense": {"ratio": 0.0, "macs_fraction": 1.0, "latency_ms": 2.0, "accuracy_pruned": 90.0, "chosen": False},
        "points": [
            {**point, "ratio": 0.9, "macs_fraction": 0.05, "latency_ms": 0.3, "passed": True, "chosen": False},
            {**point, "ratio": 0.45, "measured": 1.0, "passed": True, "chosen": True},
            {**point, "ratio": 0.225, "macs_fraction": 0.7, "latency_ms": 1.5, "passed": False, "chosen": False},
        ],
        "chosen_ratio": 0.45,
        "warnings": [],
        "confirmed": {"name": "latency_ms", "bound": 1.2, "measured": 1.1 if passed else 1.3, "passed": passed},
    }


def test_a_target_search_is_in_the_report_with_its_curve_its_chosen_point_and_the_gate_confirming_it(tmp_path):
    report = _report(target=_target(passed=True))
    assert report["target"]["chosen_ratio"] == 0.45 and report["acceptance"]["checks"]["target"]["passed"]
    assert report["acceptance"]["passed"]
    assert not _report(target=_target(passed=False))["acceptance"]["passed"]  # the final model missed the bound
    _, html_path = write_report(report, tmp_path)
    page = html_path.read_text()
    assert "Target search" in page and "chosen ratio 0.45" in page and "<b>met</b>" in page
    assert len(page.split('src="data:image/png;base64,')) - 1 == 4  # the trade-off curve besides the three others
    assert _report()["target"] is None


def test_a_drop_equal_to_the_bound_passes_although_percent_arithmetic_leaves_rounding_in_it():
    report = _report(accuracy_dense=100 * 0.55, accuracy_finetuned=100 * 0.54, max_accuracy_drop=1.0)
    assert report["acceptance"]["measured_drop"] > 1.0  # 1.000000000000007
    assert report["acceptance"]["passed"]
    assert not _report(accuracy_dense=90.0, accuracy_finetuned=88.99, max_accuracy_drop=1.0)["acceptance"]["passed"]
