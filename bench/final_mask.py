"""ProbMask's final-mask rules compared on the same learned scores (issue 10, stop 15).

One dense model per seed; one ``probmask`` stage as a job runs it (default spec: weight lr
0.01, scaled score lr, grad clip 3, per-step schedules); then, from the same trained
scores and weights, each rule draws its mask (``expected_magnitude``: top-K of s·|w|, the
default; ``topk``: top-K of s), the BatchNorm statistics are re-estimated under it and the
job's ``finetune`` stage (distilled, best validation epoch restored) recovers it for the
rest of the budget. ``--magnitude`` adds global magnitude pruning + the finetune for the
whole budget. Test accuracy (the held-out split).

    .venv/bin/python bench/final_mask.py --budget mnist1d-pmjob --dataset mnist1d --sparsity 0.9 --seed 0 \
        --out bench/results/final-mask-mnist1d-0.9-seed0.json
    .venv/bin/python bench/final_mask.py --budget image-pmjob --dataset shapes32 --arch resnet20 --sparsity 0.9 \
        --seed 0 --out bench/results/final-mask-shapes32-0.9-seed0.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench import quality  # noqa: E402
from bench.common import stage_context  # noqa: E402
from service.core.spec import FinetuneParams, JobSpec, ProbMaskParams, PruneWeightsParams  # noqa: E402
from worker.pruning.probmask import ProbMaskSparsifier, ProbMaskTraining, scaled_score_lr  # noqa: E402
from worker.pruning.stages import EngineState, runner_for  # noqa: E402
from worker.pruning.stages.probmask import GRAD_CLIP  # noqa: E402
from worker.pruning.training import recalibrate_batchnorm, train  # noqa: E402

RULES = ("expected_magnitude", "topk")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="mnist1d-pmjob", choices=sorted(quality.BUDGETS))
    parser.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "digits", "shapes32"])
    parser.add_argument("--arch", default="resnet20", choices=quality.IMAGE_ARCHS)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--magnitude", action="store_true", help="also global magnitude pruning + finetune")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b = quality.budgets(args.budget)
    data = quality.load_data(args.dataset, args.seed)
    started = time.perf_counter()
    runs = quality.dense_runs(args.dataset, data, b, args.seed, regimes=("plain",), arch=args.arch, width=args.width)
    dense = copy.deepcopy(runs["plain"]["model"]).cpu()
    rows: dict = {"dense": quality.test_acc(dense, data)}
    spec = JobSpec.model_validate({"seed": args.seed, "training": {"batch_size": b["batch"]}})
    ft_epochs = b["unstructured"] - b["pm"]

    def finetune(state: EngineState, epochs: int) -> None:
        params = FinetuneParams(epochs=epochs)
        runner_for(params).run(params, stage_context(data, spec, dense, "1-finetune"), state)

    # the probmask stage as ProbMaskRunner runs it, stopped before the final mask is drawn
    params = ProbMaskParams(sparsity=args.sparsity, epochs=b["pm"])
    context = stage_context(data, spec, dense, "0-probmask", FinetuneParams(epochs=ft_epochs))
    config = context.train_config(epochs=params.epochs, lr=params.lr, grad_clip=GRAD_CLIP)
    model = copy.deepcopy(dense)
    sparsifier = ProbMaskSparsifier(model, args.sparsity).prepare()
    score_lr = scaled_score_lr(config.epochs, config.steps_per_epoch(len(data.x_train)))
    train(model, data, config, [ProbMaskTraining(sparsifier, score_lr)])
    rows["undecided"] = sparsifier.undecided_fraction()
    scores = torch.cat([s.detach().reshape(-1) for s in sparsifier.score_parameters()])
    rows["decided_kept"] = int((scores >= 0.95).sum())
    rows["kept_target"] = sparsifier.kept_target
    masks = {rule: sparsifier.topk_masks("score" if rule == "topk" else rule) for rule in RULES}
    agree = sum(int((masks[RULES[0]][n] & masks[RULES[1]][n]).sum()) for n in masks[RULES[0]])
    rows["rules_agree"] = agree / sparsifier.kept_target
    trained = {  # the trained weights as a plain model's state (the parametrized originals, no scores)
        k.replace(".parametrizations.weight.original", ".weight"): v
        for k, v in model.state_dict().items()
        if ".parametrizations.weight.0." not in k
    }
    for rule in RULES:
        twin_model = copy.deepcopy(dense)
        twin_model.load_state_dict(trained)
        with torch.no_grad():  # what squash_mask does
            for name, mask in masks[rule].items():
                twin_model.get_submodule(name).weight.mul_(mask.to(torch.float32))
        state = EngineState(model=twin_model, masks={n: m.clone() for n, m in masks[rule].items()})
        recalibrate_batchnorm(twin_model, data.x_train, batch_size=config.batch_size, seed=config.seed)
        rows[f"{rule} (before finetune)"] = quality.test_acc(twin_model, data)
        finetune(state, ft_epochs)
        rows[rule] = quality.test_acc(twin_model, data)
        print({k: round(v, 2) for k, v in rows.items() if k.startswith(rule)}, flush=True)
    if args.magnitude:
        state = EngineState(model=copy.deepcopy(dense))
        magnitude = PruneWeightsParams(sparsity=args.sparsity)
        runner_for(magnitude).run(magnitude, stage_context(data, spec, dense, "0-prune_weights"), state)
        finetune(state, b["unstructured"])
        rows["magnitude"] = quality.test_acc(state.model, data)
    rows["elapsed_s"] = time.perf_counter() - started
    print(rows, flush=True)
    machine = {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "budgets": b, "machine": machine, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
