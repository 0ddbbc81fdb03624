"""An early-bird job on an untrained BN-folded ONNX export (issue 10): how the dense phase
trains without BatchNorm, with ``finetune``'s identity BatchNorm, and with fresh BatchNorm
(the early_bird stage's behaviour now).

Exports ResNet-20 (width 0.5, initial weights of seed 0) in eval mode (BatchNorm folded into
the convolutions), writes shapes32 (seed 0) as an npz, and runs ``run_pipeline`` (the worker's
code) with ``[early_bird {max_epochs}, finetune {}]``, batch 32. ``--variant none`` skips the
BatchNorm insertion, ``identity`` keeps the inserted BatchNorm at the identity (the two earlier
behaviours, patched into the stage for this run), ``fresh`` is the code as it is. Prints the
ticket, the accuracies and the training curves.

    PYTHONPATH=$PWD .venv/bin/python bench/eb_onnx.py --variant fresh [--finetune-lr 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import worker.pruning.stages.early_bird as early_bird_stage  # noqa: E402
from bench.quality import make_model  # noqa: E402
from bench.shapes32 import shapes32  # noqa: E402
from service.core.spec import JobSpec  # noqa: E402
from tests.worker.pruning.tiny import onnx_bytes  # noqa: E402
from worker.pipeline import PipelineInputs, run_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=["none", "identity", "fresh"], default="fresh")
    parser.add_argument("--max-epochs", type=int, default=16)
    parser.add_argument("--finetune-lr", type=float, default=None, help="finetune.lr (default: the job's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.variant == "none":
        early_bird_stage.has_batchnorm = lambda model: True  # the stage as it was: no BatchNorm inserted
    elif args.variant == "identity":
        early_bird_stage.reset_inserted_batchnorm = lambda model: 0  # finetune's identity BatchNorm kept
    data = shapes32(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        splits = {name: getattr(data, name).numpy() for name in ("x_train", "y_train", "x_val", "y_val")}
        np.savez(folder / "data.npz", **splits, x_test=data.x_test.numpy(), y_test=data.y_test.numpy())
        torch.manual_seed(0)
        model = make_model("shapes32", "resnet20", 0.5).eval()
        (folder / "model.onnx").write_bytes(onnx_bytes(model, torch.randn(2, 3, 32, 32)))
        spec = JobSpec.model_validate(
            {
                "pipeline": [
                    {"early_bird": {"max_epochs": args.max_epochs}},
                    {"finetune": {} if args.finetune_lr is None else {"lr": args.finetune_lr}},
                ],
                "training": {"batch_size": 32},
                "export": {"formats": ["onnx"]},
            }
        )
        inputs = PipelineInputs(model_path=folder / "model.onnx", dataset_path=folder / "data.npz")
        report = json.loads(run_pipeline(inputs, spec, folder / "out").files["report.json"].read_text())
    print(
        json.dumps(
            {
                "variant": args.variant,
                "finetune lr": spec.pipeline[1].params.lr,
                "ticket": report["early_bird"]["epoch"],
                "accuracy at the ticket": report["early_bird"].get("dense_accuracy"),
                "accuracy": report["accuracy"],
                "test": report["test_accuracy"],
                "curves": report["training_curves"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
