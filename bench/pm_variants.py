"""Exploration: variants of the default unstructured job at one sparsity (issue 10, stop 15).

Each variant runs the ``probmask`` stage anew (the runs are deterministic: the same stage gives
the same scores), then the job's ``finetune`` for the rest of the budget; ``magnitude`` is
``[prune_weights, finetune]`` for the whole budget. Variants: ``default`` (the stage as it was:
top-K of the scores s), ``rewind`` (the learned mask on the uploaded model's weights),
``lrtotal<N>`` (the score lr scaled to Σlr = N instead of 20), ``fill`` (the decided scores
s ≥ 0.95 kept, the rest of K from the undecided by |w|), ``swabs`` (top-K of s·|w|, what became
the default ``final_mask: expected_magnitude``). bench/final_mask.py compares the two top-K rules
on the same scores.

    .venv/bin/python bench/pm_variants.py --sparsity 0.9 --seed 0 --variants default rewind lrtotal60 magnitude \
        --out bench/results/stop15/pm-variants-mnist1d-0.9-seed0.json
"""

from __future__ import annotations

import argparse
import copy
import json
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
from worker.pruning import probmask as pm  # noqa: E402
from worker.pruning.stages import EngineState, runner_for  # noqa: E402
from worker.pruning.training import recalibrate_batchnorm  # noqa: E402

_TOPK = pm.ProbMaskSparsifier.topk_masks
STATS: dict = {}


@torch.no_grad()
def ranked_masks(self, rule: str) -> dict[str, torch.Tensor]:
    """fill: decided scores (>= 0.95) kept, the rest of K from the undecided by |w|, then by score;
    swabs: top-K of s * |w|."""
    params = self._params()
    s = torch.cat([p.scores.detach().reshape(-1).float().cpu() for p in params.values()])
    w = torch.cat(
        [self.modules[n].parametrizations.weight.original.detach().reshape(-1).abs().float().cpu() for n in params]
    )
    k = self.kept_target
    if rule == "swabs":
        key = s * w
    else:
        tier = (s >= pm.UNDECIDED_HIGH).float() * 2 + ((s > pm.UNDECIDED_LOW) & (s < pm.UNDECIDED_HIGH)).float()
        within = torch.where(tier > 0, w / (w.max() + 1e-12), s)
        key = tier * 10 + within
    order = torch.argsort(key, descending=True, stable=True)[:k]
    keep = torch.zeros(s.numel(), dtype=torch.bool)
    keep[order] = True
    by_score = torch.zeros_like(keep)
    by_score[torch.cat([m.reshape(-1) for m in _TOPK(self, "score").values()]).nonzero().squeeze(1)] = True
    by_mag = torch.zeros_like(keep)
    by_mag[torch.argsort(w, descending=True)[:k]] = True
    STATS.update(
        K=k,
        decided_kept=int((s >= pm.UNDECIDED_HIGH).sum()),
        overlap_rule_score=float((keep & by_score).sum()) / k,
        overlap_score_magnitude=float((by_score & by_mag).sum()) / k,
        overlap_rule_magnitude=float((keep & by_mag).sum()) / k,
    )
    out, start = {}, 0
    for name, p in params.items():
        n = p.scores.numel()
        out[name] = keep[start : start + n].reshape(p.scores.shape).clone()
        start += n
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="mnist1d-pmjob")
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["default", "rewind", "magnitude"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    b = quality.budgets(args.budget)
    data = quality.load_data(args.dataset, args.seed)
    t0 = time.perf_counter()
    runs = quality.dense_runs(args.dataset, data, b, args.seed, regimes=("plain",), arch=args.arch, width=args.width)
    dense = copy.deepcopy(runs["plain"]["model"]).cpu()
    rows: dict = {"dense": quality.test_acc(dense, data), "dense_s": time.perf_counter() - t0}
    print(rows, flush=True)
    spec = JobSpec.model_validate({"seed": args.seed, "training": {"batch_size": b["batch"]}})
    ft_epochs = b["unstructured"] - b["pm"]

    def finetune(state: EngineState, epochs: int) -> None:
        params = FinetuneParams(epochs=epochs)
        runner_for(params).run(params, stage_context(data, spec, dense, "1-finetune"), state)

    def probmask(state: EngineState, **kw) -> None:
        # final_mask topk: the stage as it was before stop 15 (the variants replace its ranking)
        params = ProbMaskParams(sparsity=args.sparsity, epochs=b["pm"], final_mask="topk", **kw)
        context = stage_context(data, spec, dense, "0-probmask", FinetuneParams(epochs=ft_epochs))
        runner_for(params).run(params, context, state)

    for variant in args.variants:
        t1 = time.perf_counter()
        state = EngineState(model=copy.deepcopy(dense))
        if variant == "magnitude":
            params = PruneWeightsParams(sparsity=args.sparsity)
            runner_for(params).run(params, stage_context(data, spec, dense, "0-prune_weights"), state)
            rows[f"{variant} pruned"] = quality.test_acc(state.model, data)
            finetune(state, b["unstructured"])
        else:
            if variant.startswith("lrtotal"):
                total = float(variant.removeprefix("lrtotal"))
                old = pm.run_probmask.__kwdefaults__["score_lr_total"]
                pm.run_probmask.__kwdefaults__["score_lr_total"] = total
                try:
                    probmask(state)
                finally:
                    pm.run_probmask.__kwdefaults__["score_lr_total"] = old
            elif variant in ("fill", "swabs"):
                pm.ProbMaskSparsifier.topk_masks = lambda self, rank_by=None, rule=variant: ranked_masks(self, rule)
                try:
                    probmask(state)
                finally:
                    pm.ProbMaskSparsifier.topk_masks = _TOPK
                rows[f"{variant} stats"] = dict(STATS)
            else:
                probmask(state)
            rows[f"{variant} pruned"] = quality.test_acc(state.model, data)
            rows[f"{variant} undecided"] = state.extras["probmask"]["undecided"]
            if variant == "rewind":  # the learned mask on the uploaded model's weights
                state.model.load_state_dict(dense.state_dict())
                with torch.no_grad():
                    for name, mask in state.masks.items():
                        state.model.get_submodule(name).weight.mul_(mask.to(torch.float32))
                recalibrate_batchnorm(state.model, data.x_train, batch_size=b["batch"], seed=args.seed)
                rows[f"{variant} rewound"] = quality.test_acc(state.model, data)
            finetune(state, ft_epochs)
        rows[variant] = quality.test_acc(state.model, data)
        rows[f"{variant} s"] = time.perf_counter() - t1
        print({k: v for k, v in rows.items() if k.startswith(variant)}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "budgets": b, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
