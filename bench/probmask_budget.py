"""ProbMask at short and long budgets on MNIST-1D, as a job's stages run it.

    PYTHONPATH=$PWD .venv/bin/python bench/probmask_budget.py --epochs 1 2 5 10 30 --sparsity 0.9 \\
        --json bench/results/probmask_budget.json

The MNIST-1D reference CNN (zoo ``mnist1d_cnn``) is trained densely (30 epochs, SGD 0.1, cosine,
batch 128, seed 0; cached in .bench-cache/), then for each budget E:

- ``probmask``: the ``probmask`` stage runner with the default spec at ``epochs: E`` (validation
  accuracy of the model the stage leaves: what a job without a following finetune exports),
  and the same followed by the default ``finetune`` stage at ``epochs: E`` (mask fixed);
- ``magnitude``: global magnitude pruning to the same sparsity, then the default ``finetune``
  stage for 2E epochs (the same total epochs as probmask + finetune).

Validation accuracy in percent, one seed, one torch thread. Asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import stage_context  # noqa: E402
from service.core.spec import FinetuneParams, JobSpec, ProbMaskParams  # noqa: E402
from worker.io.datasets import builtin_dataset  # noqa: E402
from worker.io.zoo import build  # noqa: E402
from worker.pruning.baselines import global_magnitude_prune  # noqa: E402
from worker.pruning.stages import EngineState, runner_for  # noqa: E402
from worker.pruning.training import TrainConfig, evaluate, train  # noqa: E402

CACHE = Path(".bench-cache/probmask_budget")


def dense_model(data, seed: int) -> torch.nn.Module:
    path = CACHE / f"mnist1d_cnn-seed{seed}.pt"
    torch.manual_seed(seed)
    model = build("mnist1d_cnn", num_classes=10)
    if path.is_file():
        model.load_state_dict(torch.load(path))
        return model
    train(model, data, TrainConfig(epochs=30, lr=0.1, batch_size=128, seed=seed, device="cpu"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def run_stage(params, dense, data, spec, state: EngineState, next_params=None) -> None:
    runner_for(params).run(params, stage_context(data, spec, dense, next_params=next_params), state)


def percent(model, data) -> float:
    return round(100.0 * evaluate(model, data.x_val, data.y_val), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 5, 10, 30])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = builtin_dataset("mnist1d", seed=args.seed)
    dense = dense_model(data, args.seed)
    spec = JobSpec.model_validate({"seed": args.seed})
    rows = []
    print(f"dense val {percent(dense, data)}", flush=True)
    for epochs in args.epochs:
        start = time.perf_counter()
        probmask = ProbMaskParams(sparsity=args.sparsity, epochs=epochs)
        finetune = FinetuneParams(epochs=epochs)
        state = EngineState(model=copy.deepcopy(dense))
        run_stage(probmask, dense, data, spec, state)
        row = {"epochs": epochs, "probmask_alone": percent(state.model, data), **state.extras["probmask"]}
        row.pop("warnings")
        state = EngineState(model=copy.deepcopy(dense))
        run_stage(probmask, dense, data, spec, state, next_params=finetune)
        run_stage(finetune, dense, data, spec, state)
        row["probmask_then_finetune"] = percent(state.model, data)
        model = copy.deepcopy(dense)
        masks = global_magnitude_prune(model, args.sparsity)
        state = EngineState(model=model, masks=masks)
        run_stage(FinetuneParams(epochs=2 * epochs), dense, data, spec, state)
        row["magnitude_then_finetune"] = percent(state.model, data)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"dense_val": percent(dense, data), "sparsity": args.sparsity, "seed": args.seed, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
