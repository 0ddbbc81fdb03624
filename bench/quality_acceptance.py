"""The "Pruning engine" acceptance scenario, end to end through ``shears prune``.

1. Train the MNIST-1D reference CNN (zoo ``mnist1d_cnn``, BatchNorm) with the engine's
   own loop (SGD 0.1, cosine, 30 epochs, batch 128, seed 0) on builtin ``mnist1d``'s
   train split; it must reach ≥ 90 % on the held-out TEST split.
2. Export it to ONNX (BatchNorm folded into the convs by the exporter).
3. ``shears prune model.onnx --dataset mnist1d --spec SPEC`` with 50 % spline channel
   pruning (layerwise) + finetune, and check the report: ONNX + TorchScript + report
   written, MACs ≤ 35 % of the original, TEST accuracy drop ≤ 2.5 points, wall time of
   the command < 180 s.

    .venv/bin/python bench/quality_acceptance.py [--out DIR] [--summary FILE.json]

``tests/worker/test_acceptance_mnist1d.py`` runs the same scenario as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SPEC = {
    "pipeline": [
        {"prune_channels": {"criterion": "spline", "ratio": 0.5, "scope": "layerwise"}},
        {"finetune": {"epochs": 30, "lr": 0.02, "distill": 0.9}},
    ],
    "training": {"batch_size": 32},
    "acceptance": {"max_accuracy_drop": 2.5},
    "seed": 0,
}
MAX_MACS_RATIO = 0.35
MAX_TEST_DROP = 2.5
MAX_SECONDS = 180.0


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


def run_shears_prune(model: Path, out: Path, spec: dict = SPEC) -> tuple[dict, float]:
    """Run the installed ``shears prune`` on ``model``; return (report.json, seconds).
    Exit code 2 (the acceptance gate on VAL accuracy failed) still leaves a report."""
    spec_path = out.parent / f"{out.name}-spec.json"
    spec_path.write_text(json.dumps(spec))  # JSON is YAML
    shears = Path(sys.executable).parent / "shears"
    command = [str(shears), "prune", str(model), "--dataset", "mnist1d", "--spec", str(spec_path), "--out", str(out),
               "--device", "cpu", "--json"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 2) or not (out / "report.json").exists():
        raise RuntimeError(f"shears prune failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads((out / "report.json").read_text()), seconds


def check(report: dict, seconds: float, out: Path) -> dict:
    """The acceptance numbers and whether each holds."""
    test = report["test_accuracy"]
    macs = report["macs"]["after"] / report["macs"]["before"]
    drop = test["dense"] - test["final"]
    return {
        "test_accuracy_dense": round(test["dense"], 2), "test_accuracy_final": round(test["final"], 2),
        "test_drop": round(drop, 2), "macs_ratio": round(macs, 4), "seconds": round(seconds, 1),
        "files": sorted(p.name for p in out.iterdir()),
        "ok": {"dense>=90": test["dense"] >= 90.0, "macs<=35%": macs <= MAX_MACS_RATIO,
               "drop<=2.5": drop <= MAX_TEST_DROP, "time<180s": seconds < MAX_SECONDS,
               "artifacts": all((out / f).exists() for f in ("model.onnx", "model.torchscript.pt", "report.json"))},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/shears-acceptance", help="work directory (models, artifacts)")
    parser.add_argument("--summary", help="also write the result JSON here")
    args = parser.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dense = train_dense_onnx(root / "mnist1d_cnn.onnx")
    trained = time.perf_counter() - start
    report, seconds = run_shears_prune(root / "mnist1d_cnn.onnx", root / "pruned")
    result = {"dense_training_s": round(trained, 1), "dense_test_accuracy_at_export": round(dense, 2),
              **check(report, seconds, root / "pruned")}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.summary:
        Path(args.summary).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(result["ok"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
