"""The script a user would write instead of a Shears job: import an ONNX model with
onnx2torch, remove 50% of the channels of every layer by L1 norm with Torch-Pruning, finetune
with plain torch, export with ``torch.onnx.export``. The baseline of bench/side_by_side.py.

    .venv/bin/python bench/bare_prune.py MODEL.onnx DATA.npz --out DIR --epochs 1 --ratio 0.5

DATA.npz holds x_train, y_train, x_val, y_val (the layout Shears accepts). Same recipe as the
Shears job it is compared with: layerwise L1 (Torch-Pruning's MagnitudeImportance p=1), the
classifier kept whole, SGD (momentum 0.9, weight decay 5e-4, cosine LR) at batch 128, the
dynamo exporter with a dynamic batch axis into one file. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F


def import_onnx2torch():
    """onnx2torch imports torchvision for two detection ops; this CPU torch has none."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.nms = ops.box_convert = ops.roi_align = None
        stub.ops = ops
        sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
        import onnx2torch

        del sys.modules["torchvision"], sys.modules["torchvision.ops"]  # torch.onnx.export probes for it
    import onnx2torch

    return onnx2torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--loader",
        choices=("onnx2torch", "shears"),
        default="onnx2torch",
        help="shears: import with worker.io.models (its ONNX fixes) and Shears' custom pruners",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import onnx
    import torch_pruning as tp

    torch.manual_seed(0)
    arrays = np.load(args.data)
    x_train, y_train = torch.from_numpy(arrays["x_train"]).float(), torch.from_numpy(arrays["y_train"]).long()
    x_val, y_val = torch.from_numpy(arrays["x_val"]).float(), torch.from_numpy(arrays["y_val"]).long()
    custom: dict = {}
    if args.loader == "shears":  # models plain onnx2torch + Torch-Pruning cannot take (corpus models)
        from worker.io.models import load_model
        from worker.pruning.custom_layers import CUSTOM_PRUNERS

        model = load_model(args.model, input_shape=tuple(x_train.shape[1:])).module.float().to(args.device)
        custom = CUSTOM_PRUNERS
    else:
        model = import_onnx2torch().convert(onnx.load(args.model)).to(args.device)
    example = x_train[:1].to(args.device)

    classifier = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1:]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=args.ratio,
        ignored_layers=classifier,
        customized_pruners=custom or None,
    )
    pruner.step()

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs))
    for _ in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(args.batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[idx].to(args.device)), y_train[idx].to(args.device)).backward()
            optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(x.to(args.device)).argmax(1).cpu() == y).sum())
            for x, y in zip(x_val.split(256), y_val.split(256), strict=True)
        )

    from pathlib import Path

    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model.cpu(),
        (torch.cat([x_val[:1], x_val[:1]]),),
        str(Path(args.out) / "model.onnx"),
        dynamo=True,
        external_data=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},),
    )
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {"val_accuracy": correct / len(x_val), "params": params, "seconds": round(time.perf_counter() - start, 3)}
        )
    )


if __name__ == "__main__":
    main()
