"""Early-bird tickets of one constant-lr run, each trained as a job's finetune would (issue 10).

Trains ResNet-20 (width 0.5) on shapes32 at the early_bird stage's constant lr for ``--epochs``
epochs, recording the spline detector's code distance every epoch and keeping each epoch's
weights; then, for every ``epoch:lr:finetune_epochs`` in ``--tickets``, prunes that epoch's
weights with ``prune_channels {criterion: spline, ratio: 0.5}`` and finetunes them with
cross-entropy (``finetune {distill: 0, lr, epochs}``, the job's stage runners). Prints the
curve and one line per ticket; ``--json`` writes them.

    PYTHONPATH=$PWD .venv/bin/python bench/eb_tickets.py --seed 0 --tickets 8:0.01:20 8:0.05:20 8:0.05:36
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import stage_context  # noqa: E402
from bench.quality import make_model, test_acc  # noqa: E402
from bench.shapes32 import shapes32  # noqa: E402
from service.core.spec import FinetuneParams, JobSpec, PruneChannelsParams  # noqa: E402
from worker.pruning.early_bird import SplineDetector  # noqa: E402
from worker.pruning.layers import discover_layers  # noqa: E402
from worker.pruning.regions import select_probes  # noqa: E402
from worker.pruning.stages import EngineState, runner_for  # noqa: E402
from worker.pruning.training import BaseCallback, TrainConfig, train  # noqa: E402


class Snapshots(BaseCallback):
    """Steps the detector (without stopping) and keeps every epoch's weights and test accuracy."""

    def __init__(self, detector: SplineDetector, data) -> None:
        self.detector, self.data = detector, data
        self.weights: list[dict] = []
        self.accuracy: list[float] = []

    def on_epoch_end(self, state) -> bool:
        self.detector.step(state.model)
        self.weights.append(copy.deepcopy(state.model.state_dict()))
        self.accuracy.append(test_acc(state.model, self.data))
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=16, help="constant-lr epochs")
    parser.add_argument("--lr", type=float, default=0.1, help="the early_bird stage's constant lr (its default)")
    parser.add_argument("--tickets", nargs="+", default=["8:0.05:20"], help="epoch:lr:finetune_epochs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = shapes32(args.seed)
    torch.manual_seed(args.seed)  # the quality benchmark's initial weights
    model = make_model("shapes32", "resnet20", 0.5)
    detector = SplineDetector(select_probes(data.x_train, 512, args.seed), discover_layers(model))
    snapshots = Snapshots(detector, data)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=32, seed=args.seed, lr_schedule="constant")
    train(model, data, config, [snapshots])
    curve = [round(d, 4) for d in detector.distances]
    print(f"code distances (epochs 2..): {curve}", flush=True)
    spec = JobSpec.model_validate({"seed": args.seed, "training": {"batch_size": 32}})
    results = []
    for item in args.tickets:
        epoch, lr, epochs = item.split(":")
        ticket = make_model("shapes32", "resnet20", 0.5)
        ticket.load_state_dict(snapshots.weights[int(epoch) - 1])
        state = EngineState(model=ticket)
        prune = PruneChannelsParams(criterion="spline", ratio=0.5)
        finetune = FinetuneParams(distill=0.0, lr=float(lr), epochs=int(epochs))
        runner_for(prune).run(prune, stage_context(data, spec, None, "0-prune", finetune), state)
        runner_for(finetune).run(finetune, stage_context(data, spec, None, "1-finetune"), state)
        row = {"ticket_epoch": int(epoch), "lr": float(lr), "finetune_epochs": int(epochs)}
        row["test"] = test_acc(state.model, data)
        results.append(row)
        print(row, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "distances": curve, "tickets": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
