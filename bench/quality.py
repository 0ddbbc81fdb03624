"""Quality benchmark of the pruning engine (BENCHMARKS.md, section "Quality").

Reproduces, on MNIST-1D, scikit-learn digits and the procedural CIFAR-shaped image task
``shapes32`` (bench/shapes32.py; ResNet-20/32, VGG-11/16 at reduced width), with several
seeds, mean ± std of the TEST accuracy (the held-out split: never used for training, early stopping or any
choice; the engine's train/val split comes from the seed):

- unstructured, 90/95/98 % sparsity: ProbMask vs global magnitude pruning vs random, same
  total epochs from the same trained dense model (ProbMask: ``pm`` epochs of mask
  training + the rest finetuning with the mask fixed; baselines: prune, then finetune
  every epoch with the mask fixed);
- structured, 30/50/70 % of the channels (layerwise, same ratio in every layer): spline
  (data space), spline_geometry (weight space), L1 filter norm, BN scale (network
  slimming) and random importances, same finetune budget, mean replacement on; plus at
  50 % a few variants of the engine's choices (global scope with greedy vs pairwise
  redundancy or mean-normalized scores, mean replacement off);
- early-bird at 50 % channels: spline-EB and bn-EB (ticket epoch, accuracy after
  finetune, training FLOPs) vs pruning the fully trained model with the same criterion.

One dense training run per (dataset, seed, regime) serves every method: the plain run
(with the spline detector watching, it does not change training) and the run with
[EB]'s L1 penalty on BN scales (bn detector watching). The EB tickets are snapshots of
those runs at the epoch their detector fired, so "EB" and "full" share their first
epochs exactly. Training FLOPs are counted as 3 × MACs × samples per epoch (forward +
backward ≈ 3 forwards).

    .venv/bin/python bench/quality.py --seeds 0 1 2 --out bench/results/quality.json
    .venv/bin/python bench/quality.py --quick --seeds 0  # the reduced budget of BENCHMARKS.md
    .venv/bin/python bench/quality.py --budget pm-default --parts unstructured --datasets mnist1d \
        --baselines magnitude --threads 1 --out bench/results/quality_pm_default.json  # ProbMask's default spec
    .venv/bin/python bench/quality.py --budget image --datasets shapes32 --arch resnet20 --width 0.5 \
        --parts early_bird unstructured --eb-detectors spline --baselines magnitude --threads 1 --seeds 0 \
        --out bench/results/quality-image-resnet20-seed0.json  # the image task (bench/shapes32.py)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.shapes32 import shapes32  # noqa: E402
from worker.io.datasets import builtin_dataset  # noqa: E402
from worker.io.zoo import VGG, build  # noqa: E402
from worker.pruning.baselines import global_magnitude_prune, random_unstructured_prune  # noqa: E402
from worker.pruning.channels import prune_channels  # noqa: E402
from worker.pruning.early_bird import BNScaleDetector, SplineDetector  # noqa: E402
from worker.pruning.layers import discover_layers  # noqa: E402
from worker.pruning.probmask import finetune_with_masks, run_probmask  # noqa: E402
from worker.pruning.regions import select_probes  # noqa: E402
from worker.pruning.training import BaseCallback, TrainConfig, count_macs_params, evaluate, train  # noqa: E402

SPARSITIES = (0.9, 0.95, 0.98)
RATIOS = (0.3, 0.5, 0.7)
CRITERIA = ("spline", "spline_geometry", "l1", "bn_scale", "random")


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU ×3 (64, 128 stride 2, 128 channels) on 8×8 digits, linear head:
    ≈ 240k parameters, wide enough for 98 % unstructured sparsity to mean something."""

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        c1, c2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
        )
        self.linear = nn.Linear(c2 * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.features(x), 1))


IMAGE_ARCHS = ("resnet20", "resnet32", "vgg11", "vgg16")


def make_model(dataset: str, arch: str = "resnet20", width: float = 0.5) -> nn.Module:
    """The benchmark's model of ``dataset``; on shapes32 the papers' CIFAR networks at reduced
    ``width`` (0.5: ResNet 8/16/32 channels, VGG 32…256)."""
    if dataset == "shapes32":
        if arch.startswith("vgg"):
            return VGG(int(arch[3:]), num_classes=10, in_channels=3, width=width)
        return build(arch, num_classes=10, width=width)
    if dataset == "mnist1d":
        return build("mnist1d_cnn", num_classes=10, width=4.0)  # 100 channels, ≈ 66k parameters
    return DigitsCNN()


# ----------------------------------------------------------------------------- budgets


BUDGETS = {
    # epochs: dense training, ProbMask mask training (``pm``) within the unstructured total,
    # structured finetune; SGD lr of dense training and of every finetune
    # (the first three pinned the paper's score lr 6e-3; ``None`` = the engine's default, scaled to the steps)
    "quick": {
        "dense": 6,
        "lr": 0.05,
        "batch": 64,
        "pm": 3,
        "unstructured": 4,
        "finetune": 3,
        "ft_lr": 0.01,
        "score_lr": 6e-3,
    },
    "long-unstructured": {
        "dense": 6,
        "lr": 0.05,
        "batch": 64,
        "pm": 12,
        "unstructured": 16,
        "finetune": 3,
        "ft_lr": 0.01,
        "score_lr": 6e-3,
    },
    "full": {
        "dense": 20,
        "lr": 0.05,
        "batch": 64,
        "pm": 8,
        "unstructured": 12,
        "finetune": 10,
        "ft_lr": 0.01,
        "score_lr": 6e-3,
    },
    # the service's default ProbMask spec (30 epochs, lr 0.01, batch 128, scaled score lr) + a 5-epoch
    # finetune with the mask fixed, vs magnitude pruning finetuned the same 35 epochs
    "pm-default": {
        "dense": 20,
        "lr": 0.05,
        "batch": 128,
        "pm": 30,
        "unstructured": 35,
        "finetune": 10,
        "ft_lr": 0.01,
        "score_lr": None,
    },
    # MNIST-1D, the service's default unstructured job: probmask {} (30 epochs) + finetune {} (1500 steps = 60
    # epochs at batch 128), vs prune_weights + finetune {epochs: 90} (part unstructured_job)
    "mnist1d-pmjob": {
        "dense": 20,
        "lr": 0.05,
        "batch": 128,
        "pm": 30,
        "unstructured": 90,
        "finetune": 10,
        "ft_lr": 0.01,
        "score_lr": None,
    },
    # mnist1d-pmjob with both stages doubled (the same 1:2 split): probmask {epochs: 60} + finetune {epochs: 120},
    # vs prune_weights + finetune {epochs: 180}
    "mnist1d-pmjob180": {
        "dense": 20,
        "lr": 0.05,
        "batch": 128,
        "pm": 60,
        "unstructured": 180,
        "finetune": 10,
        "ft_lr": 0.01,
        "score_lr": None,
    },
    # shapes32 (bench/shapes32.py): the default ProbMask spec (weight lr 0.01, scaled score lr, per-step
    # schedules) at 10 epochs instead of 30 (two shared CPU cores) + 2 epochs finetune, vs magnitude 12 epochs;
    # batch 32: 75 steps per epoch (2,400 training images)
    "image": {
        "dense": 12,
        "lr": 0.05,
        "batch": 32,
        "pm": 10,
        "unstructured": 12,
        "finetune": 3,
        "ft_lr": 0.01,
        "score_lr": None,
    },
    # shapes32, spline-EB in the papers' regime: a 40-epoch dense schedule (the "fully trained" model), the
    # job's early_bird stage (at most 40 epochs at its constant lr) and the job's default finetune
    "image-eb": {
        "dense": 40,
        "lr": 0.05,
        "batch": 32,
        "pm": 10,
        "unstructured": 12,
        "finetune": None,
        "ft_lr": None,
        "score_lr": None,
    },
    # shapes32 with a 4x longer finetune after structured pruning (criteria compared at more recovery)
    "image-ft12": {
        "dense": 12,
        "lr": 0.05,
        "batch": 32,
        "pm": 10,
        "unstructured": 12,
        "finetune": 12,
        "ft_lr": 0.01,
        "score_lr": None,
    },
    # shapes32, the service's default unstructured job: probmask {} (30 epochs) + finetune {} (1500 steps = 20
    # epochs at batch 32), vs magnitude pruning + finetune {epochs: 50} (part unstructured_job)
    "image-pmjob": {
        "dense": 12,
        "lr": 0.05,
        "batch": 32,
        "pm": 30,
        "unstructured": 50,
        "finetune": 3,
        "ft_lr": 0.01,
        "score_lr": None,
    },
    # image-pmjob with both stages doubled (the same 3:2 split): probmask {epochs: 60} (4,500 score steps at
    # batch 32) + finetune {epochs: 40}, vs magnitude pruning + finetune {epochs: 100}
    "image-pmjob100": {
        "dense": 12,
        "lr": 0.05,
        "batch": 32,
        "pm": 60,
        "unstructured": 100,
        "finetune": 3,
        "ft_lr": 0.01,
        "score_lr": None,
    },
    # shapes32 at the service's default ProbMask length: 30 epochs (2,250 score steps at batch 32) + 2 epochs
    # finetune, vs magnitude pruning finetuned the same 32 epochs
    "image-pm30": {
        "dense": 12,
        "lr": 0.05,
        "batch": 32,
        "pm": 30,
        "unstructured": 32,
        "finetune": 3,
        "ft_lr": 0.01,
        "score_lr": None,
    },
}


def load_data(dataset: str, seed: int):
    return shapes32(seed) if dataset == "shapes32" else builtin_dataset(dataset, seed=seed)


def budgets(name: str) -> dict:
    return dict(BUDGETS[name])


DEVICE = "cpu"
"""Where every run trains (``--device``; the tables were measured on the CPU unless they say otherwise)."""


def config(b: dict, seed: int, epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, batch_size=b["batch"], seed=seed, device=DEVICE)


# ----------------------------------------------------------------------------- helpers


def test_acc(model: nn.Module, data) -> float:
    device = next(model.parameters()).device
    return 100.0 * evaluate(model, data.x_test, data.y_test, device=device)


def flops_per_epoch(model: nn.Module, data) -> float:
    macs, _ = count_macs_params(model, data.x_train[:1].to(next(model.parameters()).device))
    return 3.0 * macs * len(data.x_train)


class TicketSnapshot(BaseCallback):
    """Steps an early-bird detector (and its L1 term) without stopping the run; keeps a
    copy of the model at the epoch the detector fires."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.snapshot: dict = {}

    def after_backward(self, state) -> None:
        if hasattr(self.detector, "after_backward"):
            self.detector.after_backward(state)

    def on_epoch_end(self, state) -> bool:
        fired_before = self.detector.found_epoch is not None
        self.detector.step(state.model)
        if self.detector.found_epoch is not None and not fired_before:
            self.snapshot["model"] = copy.deepcopy(state.model)
        return False  # keep training: the same run gives the fully trained model


def dense_runs(
    dataset: str, data, b: dict, seed: int, ratio: float = 0.5, regimes=("plain", "bn_l1"), arch="resnet20", width=0.5
) -> dict:
    """Plain dense training (spline detector watching) and [EB]'s L1-on-γ training (bn
    detector watching); snapshots at the epochs the detectors fire."""
    out = {}
    for regime in regimes:
        torch.manual_seed(seed)
        model = make_model(dataset, arch, width)
        layers = discover_layers(model)
        if regime == "plain":
            detector = SplineDetector(select_probes(data.x_train, 512, seed), layers[:-1])
        else:
            detector = BNScaleDetector(ratio=ratio)
        watcher = TicketSnapshot(detector)
        start = time.perf_counter()
        train(model, data, config(b, seed, b["dense"], b["lr"]), [watcher])
        snapshot = watcher.snapshot
        out[regime] = {
            "model": model,
            "ticket": snapshot.get("model"),
            "epoch": detector.found_epoch,
            "distances": [round(d, 4) for d in detector.distances],
            "seconds": time.perf_counter() - start,
        }
    return out


# ----------------------------------------------------------------------------- experiments


def unstructured(
    dense: nn.Module, data, b: dict, seed: int, baselines=("magnitude", "random"), sparsities=SPARSITIES
) -> dict:
    rows = {}
    total = b["unstructured"]
    for sparsity in sparsities:
        key = f"{int(round(sparsity * 100))}%"
        model = copy.deepcopy(dense)
        pm_config = config(b, seed, b["pm"], b["ft_lr"]).with_(grad_clip=3.0)
        result = run_probmask(model, data, pm_config, sparsity=sparsity, score_lr=b.get("score_lr", 6e-3))
        rows[f"probmask {key} (before finetune)"] = test_acc(model, data)
        rows[f"probmask {key} undecided %"] = 100 * result["undecided"]
        if total > b["pm"]:  # the finetune with the mask fixed, after the row above
            finetune_with_masks(model, result["masks"], data, config(b, seed, total - b["pm"], b["ft_lr"]))
        rows[f"probmask {key}"] = test_acc(model, data)
        for name, prune in (("magnitude", global_magnitude_prune), ("random", random_unstructured_prune)):
            if name not in baselines:
                continue
            model = copy.deepcopy(dense)
            masks = prune(model, sparsity) if prune is global_magnitude_prune else prune(model, sparsity, seed=seed)
            finetune_with_masks(model, masks, data, config(b, seed, total, b["ft_lr"]))
            rows[f"{name} {key}"] = test_acc(model, data)
        done = {k: round(v, 2) for k, v in rows.items() if key in k}
        print(f"  [seed {seed}] {key}: {done}", flush=True)
    return rows


def unstructured_job(dense: nn.Module, data, b: dict, seed: int, sparsities=SPARSITIES, variants=("default",)) -> dict:
    """ProbMask as a job runs it against global magnitude pruning recovered by the same stage.

    ``probmask``: ``[probmask {sparsity, epochs: b["pm"]}, finetune {epochs: b["unstructured"] − b["pm"]}]``
    through the stage runners, every other value the service's default (the finetune distils from
    the dense model, restores its best validation epoch); ``probmask (distilled)``: the same with
    the probmask stage's weights also distilled (weight 0.9, T 4, as the finetune's default).
    ``magnitude``: ``[prune_weights {sparsity}, finetune {epochs: b["unstructured"]}]`` (global
    magnitude pruning) with the same defaults: the same total epochs and recovery recipe."""
    from bench.common import stage_context
    from service.core.spec import FinetuneParams, JobSpec, ProbMaskParams, PruneWeightsParams
    from worker.pruning.stages import EngineState, runner_for
    from worker.pruning.training.losses import Distillation

    spec = JobSpec.model_validate({"seed": seed, "training": {"batch_size": b["batch"]}})
    finetune_epochs = b["unstructured"] - b["pm"]
    dense = copy.deepcopy(dense).cpu()  # as a job: the teacher is a CPU copy, the pruned model lives on the device
    rows: dict = {}

    def finetune(state: EngineState, epochs: int) -> None:
        params = FinetuneParams(epochs=epochs)
        runner_for(params).run(params, stage_context(data, spec, dense, "1-finetune", device=DEVICE), state)

    for sparsity in sparsities:
        key = f"{int(round(sparsity * 100))}%"
        for variant in variants:
            label = "probmask" if variant == "default" else f"probmask ({variant})"
            state = EngineState(model=copy.deepcopy(dense).to(DEVICE))
            params = ProbMaskParams(sparsity=sparsity, epochs=b["pm"])
            following = FinetuneParams(epochs=finetune_epochs)
            context = stage_context(data, spec, dense, "0-probmask", following, DEVICE)
            if variant == "distilled":
                config = context.train_config(epochs=params.epochs, lr=params.lr, grad_clip=3.0)
                teacher = copy.deepcopy(dense).to(DEVICE)  # beside the student, as the finetune stage puts it
                result = run_probmask(
                    state.model, data, config, sparsity=sparsity, loss=Distillation(teacher, 0.9, 4.0)
                )
                state.masks = result["masks"]
                state.extras["probmask"] = result
            else:
                runner_for(params).run(params, context, state)
            rows[f"{label} {key} (before finetune)"] = test_acc(state.model, data)
            rows[f"{label} {key} undecided %"] = 100 * state.extras["probmask"]["undecided"]
            finetune(state, finetune_epochs)
            rows[f"{label} {key}"] = test_acc(state.model, data)
        state = EngineState(model=copy.deepcopy(dense).to(DEVICE))
        magnitude = PruneWeightsParams(sparsity=sparsity)  # global magnitude pruning, the job's stage
        runner_for(magnitude).run(magnitude, stage_context(data, spec, dense, "0-prune_weights", device=DEVICE), state)
        finetune(state, b["unstructured"])
        rows[f"magnitude {key}"] = test_acc(state.model, data)
        done = {k: round(v, 2) for k, v in rows.items() if key in k}
        print(f"  [seed {seed}] {key}: {done}", flush=True)
    return rows


def prune_and_finetune(model: nn.Module, data, b: dict, seed: int, **kwargs) -> tuple[float, float, float]:
    # the reported run had mean replacement on everywhere but in the "no mean replacement"
    # variants (it was the engine default then; the engine now defaults to off)
    kwargs.setdefault("compensate", True)
    result = prune_channels(model, data, seed=seed, **kwargs)
    pruned = test_acc(model, data)
    train(model, data, config(b, seed, b["finetune"], b["ft_lr"]))
    return test_acc(model, data), pruned, result.macs_after / result.macs_before


def structured(
    dense: nn.Module,
    data,
    b: dict,
    seed: int,
    ratios=RATIOS,
    criteria=CRITERIA,
    variants_too: bool = True,
    compensate: bool = True,
) -> dict:
    rows = {}
    for ratio in ratios:
        for criterion in criteria:
            acc, pruned, macs = prune_and_finetune(
                copy.deepcopy(dense),
                data,
                b,
                seed,
                criterion=criterion,
                ratio=ratio,
                scope="layerwise",
                compensate=compensate,
            )
            rows[f"{criterion} {int(ratio * 100)}%"] = acc
            rows[f"{criterion} {int(ratio * 100)}% (before finetune)"] = pruned
            rows[f"{criterion} {int(ratio * 100)}% MACs"] = 100 * macs
    variants = {
        "spline global greedy": {"criterion": "spline", "scope": "global", "redundancy": "greedy"},
        "spline global pairwise": {
            "criterion": "spline",
            "scope": "global",
            "redundancy": "pairwise",
            "min_keep_fraction": 0.0,
        },
        "spline global mean-normalized": {"criterion": "spline", "scope": "global", "normalize": "mean"},
        "spline layerwise no mean replacement": {"criterion": "spline", "scope": "layerwise", "compensate": False},
        "l1 layerwise no mean replacement": {"criterion": "l1", "scope": "layerwise", "compensate": False},
        "l1 global (mean-normalized)": {"criterion": "l1", "scope": "global"},
    }
    if not variants_too:
        return rows
    for name, kwargs in variants.items():
        acc, pruned, macs = prune_and_finetune(copy.deepcopy(dense), data, b, seed, ratio=0.5, **kwargs)
        rows[f"{name} 50%"] = acc
        rows[f"{name} 50% (before finetune)"] = pruned
        rows[f"{name} 50% MACs"] = 100 * macs
    return rows


def early_bird(runs: dict, data, b: dict, seed: int, ratio: float = 0.5) -> dict:
    rows = {}
    for regime, criterion, label in (("plain", "spline", "spline"), ("bn_l1", "bn_scale", "bn")):
        if regime not in runs:
            continue
        run = runs[regime]
        dense_flops = flops_per_epoch(run["model"], data)
        variants = [("full", run["model"], b["dense"])]
        if run["ticket"] is not None:
            variants.insert(0, ("EB", run["ticket"], run["epoch"]))
        for kind, source, epochs in variants:
            model = copy.deepcopy(source)
            acc, _pruned, _macs = prune_and_finetune(
                model, data, b, seed, criterion=criterion, ratio=ratio, scope="layerwise"
            )
            flops = epochs * dense_flops + b["finetune"] * flops_per_epoch(model, data)
            rows[f"{label} {kind}"] = acc
            rows[f"{label} {kind} epoch"] = epochs
            rows[f"{label} {kind} training GFLOPs"] = flops / 1e9
        if f"{label} EB training GFLOPs" in rows:
            rows[f"{label} EB / full training FLOPs"] = rows[f"{label} EB training GFLOPs"] / (flops / 1e9)
        rows[f"{label} dense (no pruning)"] = test_acc(run["model"], data)
    return rows


def early_bird_stage(dense: nn.Module, data, b: dict, seed: int, arch: str, width: float, ratio: float = 0.5) -> dict:
    """Spline-EB as a job runs it: the service's ``early_bird`` stage from the same initial weights as
    the dense run (constant lr ``b["lr"]`` until the ticket, at most ``b["dense"]`` epochs; the ticket
    applied as drawn: spline, layerwise), then ``b["finetune"]`` epochs; against the fully trained
    (cosine) dense model pruned by the ``prune_channels`` stage with the same criterion (spline) and
    ratio and finetuned the same epochs."""
    from bench.common import stage_context
    from service.core.spec import EarlyBirdParams, JobSpec, PruneChannelsParams
    from worker.pruning.stages import EngineState, runner_for

    spec = JobSpec.model_validate({"seed": seed, "training": {"batch_size": b["batch"]}})

    def context():
        return stage_context(data, spec, None, device=DEVICE)

    dense_flops = flops_per_epoch(dense, data)
    rows: dict = {}
    torch.manual_seed(seed)  # the dense run's initial weights
    state = EngineState(model=make_model("shapes32", arch, width).to(DEVICE))
    params = EarlyBirdParams(detector="spline", ratio=ratio, max_epochs=b["dense"], lr=b["lr"])
    runner_for(params).run(params, context(), state)
    ticket_epochs = state.early_bird["epochs_trained"]
    rows["spline stage ticket epoch"] = state.early_bird["epoch"] if state.early_bird["found"] else float("nan")
    rows["spline stage epochs trained"] = ticket_epochs
    full = EngineState(model=copy.deepcopy(dense).to(DEVICE))
    prune = PruneChannelsParams(criterion="spline", ratio=ratio)  # the ticket's criterion
    runner_for(prune).run(prune, context(), full)
    for kind, st, epochs in (("EB", state, ticket_epochs), ("full", full, b["dense"])):
        rows[f"spline stage {kind} (before finetune)"] = test_acc(st.model, data)
        train(st.model, data, config(b, seed, b["finetune"], b["ft_lr"]))
        rows[f"spline stage {kind}"] = test_acc(st.model, data)
        flops = epochs * dense_flops + b["finetune"] * flops_per_epoch(st.model, data)
        rows[f"spline stage {kind} training GFLOPs"] = flops / 1e9
    rows["spline stage EB / full training FLOPs"] = (
        rows["spline stage EB training GFLOPs"] / rows["spline stage full training GFLOPs"]
    )
    return rows


def early_bird_job(dense: nn.Module, data, b: dict, seed: int, arch: str, width: float, ratio: float = 0.5) -> dict:
    """Spline-EB as a job with the service's defaults runs it, stage by stage: ``early_bird``
    (spline, constant lr 0.1 until the ticket, ``max_epochs`` = ``b["dense"]``; the ticket applied
    as drawn) then ``finetune {}`` (resolved after early_bird: no teacher, lr 0.05, the rest of the
    schedule). Against the fully trained dense model (cosine, ``b["dense"]`` epochs) pruned by
    ``prune_channels {criterion: spline}`` and finetuned with ``finetune {}`` as a job on that
    model would (distilled from it), and with cross-entropy only. Training FLOPs: 3 × MACs per
    sample (forward + backward) of every epoch each model trained, plus (``teacher counted``) the
    distilled finetune's teacher forward passes (1 × the dense MACs per sample)."""
    from bench.common import stage_context
    from service.core.spec import JobSpec
    from worker.pruning.stages import EngineState, runner_for

    rows: dict = {}

    def run_job(label: str, model: nn.Module, pipeline: list[dict], teacher: nn.Module | None) -> EngineState:
        spec = JobSpec.model_validate({"seed": seed, "training": {"batch_size": b["batch"]}, "pipeline": pipeline})
        state = EngineState(model=model.to(DEVICE))
        for index, stage in enumerate(spec.pipeline):
            following = spec.pipeline[index + 1].params if index + 1 < len(spec.pipeline) else None
            context = stage_context(data, spec, teacher, f"{index}-{stage.name}", following, DEVICE)
            runner_for(stage.params).run(stage.params, context, state)
            if stage.name != "finetune":
                rows[f"{label} (before finetune)"] = test_acc(state.model, data)
        rows[f"{label} finetune epochs"] = state.extras["finetune"][-1]["max_epochs"]
        rows[label] = test_acc(state.model, data)
        return state

    dense_flops = flops_per_epoch(dense, data)
    torch.manual_seed(seed)  # the dense run's initial weights
    eb = run_job(
        "EB",
        make_model("shapes32", arch, width),
        [{"early_bird": {"ratio": ratio, "max_epochs": b["dense"]}}, {"finetune": {}}],
        None,
    )
    rows["EB ticket epoch"] = eb.early_bird["epoch"] if eb.early_bird["found"] else float("nan")
    pruned_flops = flops_per_epoch(eb.model, data)
    rows["EB training GFLOPs"] = (
        eb.early_bird["epochs_trained"] * dense_flops + rows["EB finetune epochs"] * pruned_flops
    ) / 1e9
    for label, distill in (("full", 0.9), ("full (cross-entropy)", 0.0)):
        full = run_job(
            label,
            copy.deepcopy(dense),
            [{"prune_channels": {"criterion": "spline", "ratio": ratio}}, {"finetune": {"distill": distill}}],
            dense if distill else None,
        )
        epochs = rows[f"{label} finetune epochs"]
        flops = b["dense"] * dense_flops + epochs * flops_per_epoch(full.model, data)
        rows[f"{label} training GFLOPs"] = flops / 1e9
        if distill:
            rows[f"{label} training GFLOPs (teacher counted)"] = (flops + epochs * dense_flops / 3) / 1e9
    rows["EB / full training FLOPs"] = rows["EB training GFLOPs"] / rows["full training GFLOPs"]
    rows["EB / full training FLOPs (teacher counted)"] = (
        rows["EB training GFLOPs"] / rows["full training GFLOPs (teacher counted)"]
    )
    rows["EB - full"] = rows["EB"] - rows["full"]
    return rows


# ----------------------------------------------------------------------------- driver


def summarize(per_seed: list[dict]) -> dict:
    keys = list(per_seed[0])
    out = {}
    for k in keys:
        values = [r[k] for r in per_seed if r.get(k) is not None]
        if not values:
            continue
        out[k] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
            "values": values,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--datasets", nargs="+", default=["mnist1d", "digits"], choices=["mnist1d", "digits", "shapes32"]
    )
    parser.add_argument("--arch", default="resnet20", choices=IMAGE_ARCHS, help="shapes32's network")
    parser.add_argument("--width", type=float, default=0.5, help="shapes32's network width multiplier")
    parser.add_argument(
        "--eb-detectors", nargs="+", default=["spline", "bn"], choices=["spline", "bn"], help="early-bird regimes"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["unstructured", "structured", "early_bird"],
        choices=["unstructured", "unstructured_job", "structured", "early_bird", "early_bird_stage", "early_bird_job"],
        help="early_bird_stage (shapes32): the service's early_bird stage (constant lr until the ticket); "
        "early_bird_job (shapes32): early_bird + finetune {} against the fully trained model pruned as a job",
    )
    parser.add_argument("--quick", action="store_true", help="the 'quick' budget (what BENCHMARKS.md reports)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default=None, help="epoch budget (default: full)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (the reported tables, unless they say otherwise) or cuda")
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument(
        "--pm-distilled", action="store_true", help="unstructured_job: also ProbMask with its weights distilled"
    )
    parser.add_argument("--baselines", nargs="+", default=["magnitude", "random"], choices=["magnitude", "random"])
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="structured: channel ratios")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), help="structured: criteria")
    parser.add_argument(
        "--main-rows-only", action="store_true", help="structured: skip the global/mean-replacement variants"
    )
    parser.add_argument(
        "--no-compensate",
        action="store_true",
        help="structured: main rows without mean replacement (the service's default; the reported tables had it on)",
    )
    parser.add_argument("--out", default="bench/results/quality.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    seeds = args.seeds
    name = args.budget or ("quick" if args.quick else "full")
    b = budgets(name)
    started = time.perf_counter()
    machine = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "python": platform.python_version(),
    }
    report = {"budget": name, "budgets": b, "seeds": seeds, "machine": machine, "datasets": {}}
    report["arch"] = {"name": args.arch, "width": args.width}  # shapes32 only
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        per_seed: dict[str, list[dict]] = {p: [] for p in args.parts}
        extra: list[dict] = []
        for seed in seeds:
            data = load_data(dataset, seed)
            t0 = time.perf_counter()
            regimes = ("plain", "bn_l1") if "early_bird" in args.parts and "bn" in args.eb_detectors else ("plain",)
            runs = dense_runs(dataset, data, b, seed, regimes=regimes, arch=args.arch, width=args.width)
            dense = runs["plain"]["model"]
            info = {
                "seed": seed,
                "dense_test": test_acc(dense, data),
                "dense_params": count_macs_params(dense, data.x_train[:1])[1],
                "eb_epochs": {k: v["epoch"] for k, v in runs.items()},
                "eb_distances": {k: v["distances"] for k, v in runs.items()},
            }
            elapsed = time.perf_counter() - t0
            print(f"[{dataset} seed {seed}] dense test {info['dense_test']:.2f} ({elapsed:.0f}s)", flush=True)
            for part in args.parts:
                t1 = time.perf_counter()
                try:
                    if part == "unstructured":
                        rows = unstructured(dense, data, b, seed, baselines=args.baselines, sparsities=args.sparsities)
                    elif part == "unstructured_job":
                        variants = ("default", "distilled") if args.pm_distilled else ("default",)
                        rows = unstructured_job(dense, data, b, seed, sparsities=args.sparsities, variants=variants)
                    elif part == "structured":
                        rows = structured(
                            dense,
                            data,
                            b,
                            seed,
                            ratios=args.ratios,
                            criteria=args.criteria,
                            variants_too=not args.main_rows_only,
                            compensate=not args.no_compensate,
                        )
                    elif part == "early_bird_stage":
                        rows = early_bird_stage(dense, data, b, seed, args.arch, args.width)
                    elif part == "early_bird_job":
                        rows = early_bird_job(dense, data, b, seed, args.arch, args.width)
                    else:
                        rows = early_bird(runs, data, b, seed)
                except Exception as exc:  # one failing part must not lose the others' (long) runs
                    print(f"[{dataset} seed {seed}] {part} FAILED: {exc!r}", flush=True)
                    info.setdefault("failed", {})[part] = repr(exc)
                    continue
                per_seed[part].append(rows)
                short = {k: round(v, 2) for k, v in rows.items() if "MACs" not in k and "before" not in k}
                print(f"[{dataset} seed {seed}] {part} ({time.perf_counter() - t1:.0f}s): {short}", flush=True)
                report["datasets"][dataset] = {
                    "seeds": [*extra, info],
                    **{p: summarize(v) for p, v in per_seed.items() if v},
                }
                out.write_text(json.dumps(report, indent=1))  # partial results survive an interruption
            extra.append(info)
            report["datasets"][dataset] = {"seeds": extra, **{p: summarize(v) for p, v in per_seed.items() if v}}
            report["elapsed_s"] = round(time.perf_counter() - started, 1)
            out.write_text(json.dumps(report, indent=1))  # partial results survive an interruption
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(report, indent=1))
    print(f"done in {report['elapsed_s']:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
