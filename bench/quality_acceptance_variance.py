"""How much the acceptance scenario's result varies with the dense model and the finetune seed.

    .venv/bin/python bench/quality_acceptance_variance.py THREADS DENSE_SEED [SPECS_JSON]

Trains the reference CNN with ``THREADS`` torch threads and ``DENSE_SEED`` (the thread count
changes the floating-point sums, so the trained model), exports it, and runs ``shears prune``
with the acceptance spec and each extra spec of ``SPECS_JSON`` ({name: spec}). Prints one
line per spec: threads, dense seed, spec, dense and final TEST accuracy, drop, MACs ratio,
seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality_acceptance import SPEC, check, run_shears_prune, train_dense_onnx  # noqa: E402


def main() -> None:
    threads, seed = int(sys.argv[1]), int(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    torch.set_num_threads(threads)
    root = Path(f"/tmp/shears-acceptance-variance-{threads}-{seed}")
    root.mkdir(parents=True, exist_ok=True)
    dense = train_dense_onnx(root / "model.onnx", seed=seed)
    for name, spec in [("acceptance", SPEC), *extra.items()]:
        report, seconds = run_shears_prune(root / "model.onnx", root / f"out-{name}", spec)
        result = check(report, seconds, root / f"out-{name}")
        print(
            threads,
            seed,
            name,
            round(dense, 2),
            result["test_accuracy_final"],
            result["test_drop"],
            result["macs_ratio"],
            result["seconds"],
            flush=True,
        )


if __name__ == "__main__":
    main()
