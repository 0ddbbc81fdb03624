"""Targets instead of ratios (issue 10): ``prune_channels.target`` against the fixed 50 % default.

For every model: train it densely (bench/recovery.py's recipes) and run three jobs through the
engine's entry point (:func:`worker.pipeline.run_pipeline`, every value default unless named).
``--source torch`` (default) hands the trained ``nn.Module`` to the pipeline (its loader is
replaced by one returning the module, BatchNorm layers intact: what a safetensors upload of a
zoo architecture gives); ``--source onnx`` exports it to ONNX first and uploads that file (the
exporter folds BatchNorm into the convolutions, which makes recovery harder):

- **fixed**: ``prune_channels {}`` (ratio 0.5) + ``finetune {}``;
- **accuracy target**: ``prune_channels {target: {max_accuracy_drop: 1.0}}`` + ``finetune {}``;
- **latency target**: ``prune_channels {target: {latency_ms: X, batch: B}}`` + ``finetune {}``,
  X = ``--latency-fraction`` × the dense ONNX file's median onnxruntime latency at batch B
  measured here just before (one intra-op thread, like the job).

Records, per job: validation accuracy drop (the gate's measure), test drop, MACs and parameters
kept, the gate's verdict, the chosen ratio, the search's points and seconds, the load average
(1 min) before and after; for the latency job the requested bound and the latency the job's
confirmation measured on its delivered ``model.onnx``.

    .venv/bin/python bench/targets.py --models mnist1d_wide digits_cnn --out bench/results/targets-seed0.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench.recovery import MODELS, dataset  # noqa: E402
from service.core.spec import JobSpec  # noqa: E402
from worker.export import export_onnx, onnxruntime_latency  # noqa: E402
from worker.pipeline import PipelineInputs, run_pipeline  # noqa: E402
from worker.pruning.training import TrainConfig, evaluate, train  # noqa: E402


@contextlib.contextmanager
def _torch_upload(model: torch.nn.Module, data):
    """The pipeline loads ``model`` (a fresh copy per job) and ``data`` instead of reading a file."""
    import worker.pipeline as pipeline

    original = pipeline.load_inputs
    pipeline.load_inputs = lambda inputs, spec: (copy.deepcopy(model), data, "pytorch")
    try:
        yield
    finally:
        pipeline.load_inputs = original


def _job(model_path: Path, ds_name: str, prune: dict, seed: int, out: Path) -> dict:
    spec = JobSpec.model_validate(
        {
            "dataset": {"builtin": ds_name},
            "pipeline": [{"prune_channels": prune}, {"finetune": {}}],
            "export": {"formats": ["onnx"]},
            "seed": seed,
        }
    )
    load = os.getloadavg()[0]
    start = time.perf_counter()
    report = run_pipeline(PipelineInputs(model_path=model_path, builtin_dataset=ds_name), spec, out).report
    seconds = time.perf_counter() - start
    target = report.get("target")
    row = {
        "prune": prune,
        "val_dense": report["accuracy"]["dense"],
        "val_final": report["accuracy"]["final"],
        "val_drop": report["acceptance"]["measured_drop"],
        "test_drop": report["test_accuracy"]["dense"] - report["test_accuracy"]["final"],
        "macs_fraction": report["macs"]["ratio"],
        "params_fraction": report["parameters"]["ratio"],
        "gate_passed": report["acceptance"]["passed"],
        "checks": report["acceptance"]["checks"],
        "latency_ms": {b: s["median_ms"] for b, s in (report["latency"]["after"] or {}).get("batch_sizes", {}).items()},
        "seconds": round(seconds, 1),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }
    if target is not None:
        row["target"] = {
            key: target[key] for key in ("bound", "value", "batch", "chosen_ratio", "seconds", "points", "confirmed")
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mnist1d_wide", "digits_cnn"], choices=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32, help="batch of the latency target")
    parser.add_argument("--latency-fraction", type=float, default=0.5)
    parser.add_argument("--target-steps", type=int, default=None, help="target.steps of the accuracy job")
    parser.add_argument("--round-to", type=int, default=None, help="prune_channels.round_to of the latency job")
    parser.add_argument("--source", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--jobs", nargs="+", default=["fixed", "accuracy", "latency"])
    parser.add_argument("--out", default="bench/results/targets.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"seed": args.seed, "threads": args.threads, "source": args.source, "models": {}}
    for name in args.models:
        ds_name, make, epochs, lr = MODELS[name]
        data = dataset(ds_name, args.seed)
        torch.manual_seed(args.seed)
        dense = make()
        train(dense, data, TrainConfig(epochs=epochs, lr=lr, batch_size=128, seed=args.seed))
        row: dict = {"dataset": ds_name, "dense_val": 100 * evaluate(dense, data.x_val, data.y_val)}
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            model_path = export_onnx(dense.eval(), data.x_val[:2], Path(tmp) / f"{name}.onnx")  # timed either way
            if args.source == "torch":
                stack.enter_context(_torch_upload(dense, data))
            for job in args.jobs:
                if job == "fixed":
                    prune: dict = {}
                elif job == "accuracy":
                    prune = {"target": {"max_accuracy_drop": 1.0}}
                    if args.target_steps is not None:
                        prune["target"]["steps"] = args.target_steps
                else:
                    dense_ms = onnxruntime_latency(model_path, tuple(data.input_shape), batch_sizes=(args.batch,))
                    dense_ms = dense_ms["batch_sizes"][str(args.batch)]["median_ms"]
                    bound = float(f"{args.latency_fraction * dense_ms:.3g}")
                    row["dense_latency_ms"] = dense_ms
                    prune = {"target": {"latency_ms": bound, "batch": args.batch}}
                    if args.round_to is not None:
                        prune["round_to"] = args.round_to
                row[job] = _job(model_path, ds_name, prune, args.seed, Path(tmp) / job)
                summary = {k: row[job][k] for k in ("val_drop", "macs_fraction", "gate_passed", "seconds")}
                if "target" in row[job]:
                    summary |= {"ratio": row[job]["target"]["chosen_ratio"], "check": row[job]["checks"].get("target")}
                print(f"[{name}] {job}: {summary}", flush=True)
                results["models"][name] = row
                out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
