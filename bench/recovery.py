"""Recovery benchmark: the default structured spec (50 % of channels) on models nobody tuned for.

For every model: train it densely, apply the service's default ``prune_channels`` stage (spline,
layerwise, 50 %), then finetune with each recipe below, through the stage runners (``worker.pruning.stages``),
so that a recipe here is exactly a ``finetune`` stage of a job. Reports the validation
drop (the split the acceptance gate uses), the test drop and the MACs kept.

Models: the MNIST-1D reference CNN (the model the acceptance recipe was tuned on) and models
that were not used to choose anything: the MNIST-1D CNN at twice the width, and without
BatchNorm; the 2-D digits CNN of bench/quality.py on scikit-learn digits; ResNet-20, a VGG-11-style net and MobileNetV2 at reduced width on a procedurally
generated CIFAR-shaped task (32×32 RGB, 10 classes: oriented gratings of random colour,
phase and frequency, plus clutter and noise; the class is the orientation).

    .venv/bin/python bench/recovery.py --models mnist1d_cnn mnist1d_wide mnist1d_nobn digits_cnn \\
        --recipes old distill steps --out bench/results/recovery.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import stage_context  # noqa: E402
from service.core.spec import FinetuneParams, JobSpec, PruneChannelsParams, TrainingParams  # noqa: E402
from worker.io.data import DataSplits  # noqa: E402
from worker.io.datasets import builtin_dataset  # noqa: E402
from worker.io.zoo import build  # noqa: E402
from worker.pruning.stages import EngineState, runner_for  # noqa: E402
from worker.pruning.training import TrainConfig, count_macs_params, evaluate, train  # noqa: E402

RECIPES = {
    "old": {"epochs": 10, "lr": 0.01, "distill": 0.0},  # the service default before issue 10
    "distill": {"epochs": 10, "lr": 0.01, "distill": 0.9},
    "steps": {"epochs": None, "lr": 0.01, "distill": 0.9},  # epochs from the default step budget
}


def gratings(n: int, seed: int, size: int = 32, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Oriented gratings: class c has orientation c·π/classes (± 3°), random colour, phase,
    frequency (2–5 cycles), a random clutter blob and Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    theta = y.float() * math.pi / classes + (torch.rand(n, generator=gen) - 0.5) * math.radians(6)
    freq = 2.0 + 3.0 * torch.rand(n, generator=gen)
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]
    wave = torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])
    colour = torch.rand(n, 3, generator=gen) * 2 - 1
    img = wave[:, None] * colour[:, :, None, None]
    centre = torch.rand(n, 2, generator=gen)
    blob = torch.exp(-((xx[None] - centre[:, 0, None, None]) ** 2 + (yy[None] - centre[:, 1, None, None]) ** 2) / 0.01)
    img = img + blob[:, None] * (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * 2
    img = img + 0.8 * torch.randn(img.shape, generator=gen)
    return img.float(), y


def image_task(seed: int = 0, n_train: int = 2000, n_val: int = 500, n_test: int = 500) -> DataSplits:
    x, y = gratings(n_train + n_val + n_test, seed=1000 + seed)
    a, b = n_train, n_train + n_val
    return DataSplits(x[:a], y[:a], x[a:b], y[a:b], 10, x[b:], y[b:])


class VGG11ish(nn.Module):
    """VGG-11 layout (64-M-128-M-256-256-M-512-512-M-512-512-M, × width) with BN, 32×32 input."""

    def __init__(self, width: float = 0.125, classes: int = 10) -> None:
        super().__init__()
        cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c = max(4, int(v * width))
                layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _digits_cnn() -> nn.Module:
    from bench.quality import DigitsCNN

    return DigitsCNN()


MODELS = {
    # name: (dataset, constructor, dense epochs, dense lr)
    "mnist1d_cnn": ("mnist1d", lambda: build("mnist1d_cnn", num_classes=10), 30, 0.1),
    "mnist1d_wide": ("mnist1d", lambda: build("mnist1d_cnn", num_classes=10, width=2.0), 30, 0.1),
    "mnist1d_nobn": ("mnist1d", lambda: build("mnist1d_cnn", num_classes=10, batchnorm=False), 30, 0.05),
    "digits_cnn": ("digits", lambda: _digits_cnn(), 20, 0.05),
    "resnet20": ("images", lambda: build("resnet20", num_classes=10, width=0.5), 20, 0.1),
    "vgg11": ("images", lambda: VGG11ish(width=0.125), 20, 0.05),
    "mobilenet_v2": ("images", lambda: build("mobilenet_v2", num_classes=10, width=0.25), 20, 0.1),
}


def dataset(name: str, seed: int) -> DataSplits:
    return image_task(seed) if name == "images" else builtin_dataset(name, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/recovery.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "seed": args.seed,
        "threads": args.threads,
        "recipes": {k: RECIPES[k] for k in args.recipes},
        "models": {},
    }
    spec = JobSpec(seed=args.seed, training=TrainingParams())
    for name in args.models:
        ds_name, make, epochs, lr = MODELS[name]
        data = dataset(ds_name, args.seed)
        torch.manual_seed(args.seed)
        dense = make()
        t0 = time.perf_counter()
        train(dense, data, TrainConfig(epochs=epochs, lr=lr, batch_size=128, seed=args.seed))
        row = {
            "dataset": ds_name,
            "dense_epochs": epochs,
            "dense_val": 100 * evaluate(dense, data.x_val, data.y_val),
            "dense_test": 100 * evaluate(dense, data.x_test, data.y_test),
            "dense_seconds": round(time.perf_counter() - t0, 1),
        }
        print(
            f"[{name}] dense val {row['dense_val']:.2f} test {row['dense_test']:.2f} ({row['dense_seconds']}s)",
            flush=True,
        )
        macs_dense, _ = count_macs_params(dense, data.x_val[:1])
        for recipe in args.recipes:
            model = copy.deepcopy(dense)
            context = stage_context(data, spec, dense, f"ft-{recipe}")
            state = EngineState(model=model)
            runner_for(PruneChannelsParams()).run(PruneChannelsParams(), context, state)  # the default structured stage
            model = state.model
            macs, _ = count_macs_params(model, data.x_val[:1])
            pruned_val = 100 * evaluate(model, data.x_val, data.y_val)
            params = FinetuneParams(**{k: v for k, v in RECIPES[recipe].items() if v is not None})
            t1 = time.perf_counter()
            runner_for(params).run(params, context, state)  # exactly a job's finetune stage
            val, test = 100 * evaluate(model, data.x_val, data.y_val), 100 * evaluate(model, data.x_test, data.y_test)
            row[recipe] = {
                "params": params.model_dump(),
                "macs_ratio": macs / macs_dense,
                "pruned_val": pruned_val,
                "val": val,
                "test": test,
                "val_drop": row["dense_val"] - val,
                "test_drop": row["dense_test"] - test,
                "seconds": round(time.perf_counter() - t1, 1),
            }
            print(
                f"[{name}] {recipe}: val drop {row[recipe]['val_drop']:.2f}, test drop "
                f"{row[recipe]['test_drop']:.2f}, MACs {100 * macs / macs_dense:.1f}% ({row[recipe]['seconds']}s)",
                flush=True,
            )
        report["models"][name] = row
        out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
