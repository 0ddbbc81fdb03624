"""How well a short finetune predicts the full one (the default of ``target.steps``, issue 10).

Trains a model as bench/recovery.py does, prunes it with the default structured stage at each
``--ratios`` and finetunes each pruned copy for each of ``--steps`` optimizer steps (the
default finetune, with distillation; 1000 = the default budget), through the stage runners.
Prints the validation drop (the gate's measure) of every pair: a quality target judges its
candidates by the short finetune, so the short drop should not be far above the full one.

    .venv/bin/python bench/targets_calibration.py --model mnist1d_wide --ratios 0.5 0.625 0.75 \\
        --steps 200 500 1000
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench.recovery import MODELS, dataset  # noqa: E402
from service.core.spec import FinetuneParams, JobSpec, PruneChannelsParams  # noqa: E402
from worker.pruning.stages import EngineState, StageContext, runner_for  # noqa: E402
from worker.pruning.training import TrainConfig, TrainHooks, evaluate, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist1d_wide", choices=list(MODELS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.625, 0.75])
    parser.add_argument("--steps", nargs="+", type=int, default=[200, 500, 1000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ds_name, make, epochs, lr = MODELS[args.model]
    data = dataset(ds_name, args.seed)
    torch.manual_seed(args.seed)
    dense = make()
    train(dense, data, TrainConfig(epochs=epochs, lr=lr, batch_size=128, seed=args.seed))
    dense_val = 100 * evaluate(dense, data.x_val, data.y_val)
    spec = JobSpec(seed=args.seed)
    for ratio in args.ratios:
        for steps in args.steps:
            context = StageContext(
                data=data, spec=spec, device=torch.device("cpu"), hooks=TrainHooks(), teacher=dense, stage_id="ft"
            )
            state = EngineState(model=copy.deepcopy(dense))
            prune = PruneChannelsParams(ratio=ratio)
            runner_for(prune).run(prune, context, state)
            finetune = FinetuneParams(steps=steps)
            start = time.perf_counter()
            runner_for(finetune).run(finetune, context, state)
            drop = dense_val - 100 * evaluate(state.model, data.x_val, data.y_val)
            print(f"{args.model} ratio {ratio} steps {steps}: val drop {drop:.3f} ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
