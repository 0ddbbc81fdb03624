"""Recovery on BN-folded ONNX exports: the default structured spec on models as users upload them.

Users export in eval mode, so the ONNX exporter folds every BatchNorm into the conv before it:
the converted model has no BatchNorm. For every model below: train it (with BatchNorm) on its
task, export it to ONNX (``torch.onnx.export(dynamo=False)``, eval mode: BN folded), load it
back with the service's importer (``worker.io.onnx.convert.load_onnx``), check it has no
BatchNorm left, then run the default ``prune_channels`` stage and a ``finetune`` stage through
the stage runners (``worker.pruning.stages``: exactly a job's stages). Reports dense, pruned
and final validation accuracy and the MACs kept.

Models (digits: scikit-learn 8×8 digits; mnist1d: MNIST-1D), chosen from different families:
``tiny_cnn`` (the end-to-end test's TinyCNN, conv+bias+BN, global pool), ``mnist1d_cnn`` (the
MNIST-1D reference CNN), ``resnet20`` (ResNet-20 at width 0.5, residual), ``digits_cnn``
(bench/quality.py's 3-conv stack), ``vgg`` (VGG-style conv-conv-pool ×2, conv, two linear
layers), ``mobilenet`` (MobileNetV2 at width 0.25: depthwise, inverted residuals).
``HELD_OUT`` were not looked at while choosing the defaults.

    .venv/bin/python bench/recovery_folded.py --models tiny_cnn mnist1d_cnn resnet20 \\
        --recipe default='{}' --seed 0 --out bench/results/recovery-folded-seed0.json
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
from torch import nn  # noqa: E402

from bench.common import stage_context  # noqa: E402
from service.core.spec import FinetuneParams, JobSpec, PruneChannelsParams, TrainingParams  # noqa: E402
from worker.io.data import DataSplits  # noqa: E402
from worker.io.datasets import builtin_dataset  # noqa: E402
from worker.io.onnx.convert import load_onnx  # noqa: E402
from worker.io.zoo import build  # noqa: E402
from worker.pruning.stages import EngineState, runner_for  # noqa: E402
from worker.pruning.training import TrainConfig, count_macs_params, evaluate, train  # noqa: E402

HELD_OUT = ("digits_cnn", "vgg", "mobilenet")


class TinyCNN(nn.Module):
    """tests/integration/conftest.py's TinyCNN (the end-to-end test's model)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsVGG(nn.Module):
    """VGG-style: [conv-BN-ReLU ×2, max-pool] ×2 (32, 64 channels), conv 128, two linear layers."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _digits_cnn() -> nn.Module:
    from bench.quality import DigitsCNN

    return DigitsCNN(width=32)


MODELS = {
    # name: (dataset, constructor, dense epochs, dense lr)
    "tiny_cnn": ("digits", TinyCNN, 30, 0.05),
    "mnist1d_cnn": ("mnist1d", lambda: build("mnist1d_cnn", num_classes=10), 30, 0.1),
    "resnet20": ("digits", lambda: build("resnet20", num_classes=10, in_channels=1, width=0.5), 20, 0.05),
    "digits_cnn": ("digits", _digits_cnn, 20, 0.05),
    "vgg": ("digits", DigitsVGG, 20, 0.05),
    "mobilenet": ("digits", lambda: build("mobilenet_v2", num_classes=10, in_channels=1, width=0.25), 30, 0.05),
}


def folded_dense(name: str, data: DataSplits, seed: int, cache: Path) -> tuple[nn.Module, dict]:
    """Train ``name`` (with BN), export it to ONNX in eval mode (BN folded), load it back."""
    _, make, epochs, lr = MODELS[name]
    path = cache / f"{name}-seed{seed}.onnx"
    info: dict = {"onnx": str(path)}
    if not path.exists():
        torch.manual_seed(seed)
        model = make()
        t0 = time.perf_counter()
        train(model, data, TrainConfig(epochs=epochs, lr=lr, batch_size=128, seed=seed))
        info["dense_seconds"] = round(time.perf_counter() - t0, 1)
        info["torch_val"] = 100 * evaluate(model, data.x_val, data.y_val)
        model.eval()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(
            model,
            (data.x_val[:1],),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}},
        )
    model = load_onnx(path)
    info["batchnorm_layers"] = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return model, info


def run_recipe(dense: nn.Module, data: DataSplits, seed: int, prune: dict, finetune: dict) -> dict:
    """The default prune stage (with ``prune`` overrides), then ``finetune`` through the stage runners."""
    spec = JobSpec(seed=seed, training=TrainingParams())
    model = copy.deepcopy(dense)
    params = FinetuneParams(**finetune)
    # iterative pruning's short finetunes use the following finetune's recipe
    context = stage_context(data, spec, dense, "1-finetune", next_params=params)
    state = EngineState(model=model)
    t0 = time.perf_counter()
    prune_params = PruneChannelsParams(**prune)
    runner_for(prune_params).run(prune_params, context, state)
    macs_dense, _ = count_macs_params(dense, data.x_val[:1])
    macs, _ = count_macs_params(state.model, data.x_val[:1])
    pruned_val = 100 * evaluate(state.model, data.x_val, data.y_val)
    runner_for(params).run(params, context, state)
    return {
        "prune": prune,
        "finetune": finetune,
        "macs_ratio": macs / macs_dense,
        "pruned_val": pruned_val,
        "val": 100 * evaluate(state.model, data.x_val, data.y_val),
        "test": 100 * evaluate(state.model, data.x_test, data.y_test) if data.x_test is not None else None,
        "extras": state.extras.get("finetune"),
        "iterative_pruning": state.extras.get("iterative_pruning"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        help="name=JSON finetune params (repeatable; '{}' is the default finetune); "
        "a JSON object with keys 'prune' and 'finetune' overrides both stages",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=".bench-cache/folded")
    parser.add_argument("--out", default="bench/results/recovery-folded.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipes = dict(r.split("=", 1) for r in (args.recipe or ["default={}"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = json.loads(out.read_text()) if out.exists() else {"seed": args.seed, "models": {}}
    for name in args.models:
        data = builtin_dataset(MODELS[name][0], seed=args.seed)
        dense, info = folded_dense(name, data, args.seed, Path(args.cache))
        row = report["models"].setdefault(name, {})
        row.update(info, held_out=name in HELD_OUT, dense_val=100 * evaluate(dense, data.x_val, data.y_val))
        if data.x_test is not None:
            row["dense_test"] = 100 * evaluate(dense, data.x_test, data.y_test)
        print(
            f"[{name}] folded dense val {row['dense_val']:.2f} (BN layers left: {info['batchnorm_layers']})", flush=True
        )
        for recipe, text in recipes.items():
            given = json.loads(text)
            prune, finetune = (given["prune"], given["finetune"]) if "finetune" in given else ({}, given)
            result = run_recipe(dense, data, args.seed, prune, finetune)
            result["val_drop"] = row["dense_val"] - result["val"]
            if result["test"] is not None:
                result["test_drop"] = row["dense_test"] - result["test"]
            row[recipe] = result
            print(
                f"[{name}] {recipe}: pruned {result['pruned_val']:.1f} -> {result['val']:.2f} "
                f"(drop {result['val_drop']:.2f}; test drop {result.get('test_drop', float('nan')):.2f}), MACs {100 * result['macs_ratio']:.1f}%, "
                f"{result['extras']} ({result['seconds']}s)",
                flush=True,
            )
            out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
