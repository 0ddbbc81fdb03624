"""Acceptance of the pruning engine: ``shears prune`` on the ONNX export of a trained
MNIST-1D reference CNN, 50 % spline channel pruning + finetune (bench/quality_acceptance.py).

About 25 s on an idle 2-core CPU (dense training ≈ 8 s, the command ≈ 13 s); several
minutes when other jobs share the cores (the command's own limit is 180 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.quality_acceptance import (  # noqa: E402
    MAX_MACS_RATIO,
    MAX_SECONDS,
    MAX_TEST_DROP,
    check,
    run_shears_prune,
    train_dense_onnx,
)


def test_shears_prune_halves_the_channels_of_a_trained_mnist1d_cnn_within_the_accuracy_budget(tmp_path):
    dense = train_dense_onnx(tmp_path / "mnist1d_cnn.onnx")
    assert dense >= 90.0, f"the reference CNN reached only {dense:.1f}% test accuracy"

    report, seconds = run_shears_prune(tmp_path / "mnist1d_cnn.onnx", tmp_path / "pruned")
    result = check(report, seconds, tmp_path / "pruned")

    assert result["ok"]["artifacts"], result["files"]
    assert report["structure"]["channels_removed"] is True
    assert abs(report["test_accuracy"]["dense"] - dense) < 0.5  # the ONNX import is the trained model
    assert result["macs_ratio"] <= MAX_MACS_RATIO, result
    assert result["test_drop"] <= MAX_TEST_DROP, result
    assert seconds < MAX_SECONDS, result
