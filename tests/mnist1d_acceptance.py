"""The "Pruning engine" acceptance scenario on MNIST-1D, shared by the acceptance test
(tests/worker/test_acceptance_mnist1d.py) and its benchmark (bench/quality_acceptance.py).

1. Train the MNIST-1D reference CNN (zoo ``mnist1d_cnn``, BatchNorm) with the engine's own
   loop (SGD 0.1, cosine, 30 epochs, batch 128, seed 0) on builtin ``mnist1d``'s train split;
   it must reach ≥ 90 % on the held-out TEST split.
2. Export it to ONNX (BatchNorm folded into the convs by the exporter).
3. ``shears prune model.onnx --dataset mnist1d --spec SPEC`` with 50 % spline channel pruning
   (layerwise) + finetune, gate on: ONNX + TorchScript + report written, MACs ≤ 35 % of the
   original, TEST accuracy drop ≤ 2.5 points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = {
    "pipeline": [
        {"prune_channels": {"criterion": "spline", "ratio": 0.5, "scope": "layerwise"}},
        {"finetune": {"epochs": 30, "distill": 0.9}},  # lr: the default (0.05 with BatchNorm re-inserted)
    ],
    "training": {"batch_size": 32},
    "acceptance": {"max_accuracy_drop": 2.5},
    "seed": 0,
}
MIN_DENSE_ACCURACY = 90.0
MAX_MACS_RATIO = 0.35
MAX_TEST_DROP = 2.5
ARTIFACTS = ("model.onnx", "model.torchscript.pt", "report.json")


def train_dense_onnx(path: Path, seed: int = 0) -> float:
    """Train the reference CNN, export it to ``path`` (ONNX); return its TEST accuracy (%)."""
    import torch

    from worker.export import export_onnx
    from worker.io.datasets import builtin_dataset
    from worker.io.zoo import build
    from worker.pruning.training import TrainConfig, evaluate, train

    data = builtin_dataset("mnist1d", seed=seed)
    torch.manual_seed(seed)
    model = build("mnist1d_cnn", num_classes=10)
    train(model, data, TrainConfig(epochs=30, lr=0.1, batch_size=128, seed=seed, device="cpu"))
    export_onnx(model.eval(), data.x_val[:1], path, opset=18, dynamic_batch=True)
    return 100.0 * evaluate(model, data.x_test, data.y_test)


class PruneFailed(RuntimeError):
    """``shears prune`` exited non-zero (2: its acceptance gate on VAL accuracy failed)."""


def run_shears_prune(model: Path, out: Path, spec: dict = SPEC) -> tuple[dict, float]:
    """Run the installed ``shears prune`` on ``model``; return (report.json, seconds).
    Any exit code but 0 raises, the gate's 2 included: the scenario passes its own gate."""
    spec_path = out.parent / f"{out.name}-spec.json"
    spec_path.write_text(json.dumps(spec))  # JSON is YAML
    shears = Path(sys.executable).parent / "shears"
    command = [
        str(shears),
        "prune",
        str(model),
        "--dataset",
        "mnist1d",
        "--spec",
        str(spec_path),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--json",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise PruneFailed(f"shears prune exited {done.returncode}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads((out / "report.json").read_text()), seconds


def check(report: dict, out: Path) -> dict:
    """The acceptance numbers and whether each holds."""
    test = report["test_accuracy"]
    macs = report["macs"]["after"] / report["macs"]["before"]
    drop = test["dense"] - test["final"]
    return {
        "test_accuracy_dense": round(test["dense"], 2),
        "test_accuracy_final": round(test["final"], 2),
        "test_drop": round(drop, 2),
        "macs_ratio": round(macs, 4),
        "files": sorted(p.name for p in out.iterdir()),
        "ok": {
            "dense>=90": test["dense"] >= MIN_DENSE_ACCURACY,
            "macs<=35%": macs <= MAX_MACS_RATIO,
            "drop<=2.5": drop <= MAX_TEST_DROP,
            "artifacts": all((out / f).exists() for f in ARTIFACTS),
        },
    }
