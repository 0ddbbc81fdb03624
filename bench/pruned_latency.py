"""Pruned models in onnxruntime (CPU): latency at batch 1 and 32 and file size before/after
structured channel pruning at 30/50/70 %, on the zoo networks at 32×32, and the ratio of
the measured speedup to the MAC reduction (1.0 = latency fell exactly as much as MACs).

Weights are random (latency does not depend on them); channels are scored with ``l1``
(or ``--criterion spline``) and removed physically by
``worker.pruning.channels.prune_channels`` on a small random dataset; export and timing
use the service's own ``worker.export.export_onnx`` and ``onnxruntime_latency`` (one
intra-op thread, median of ``--repeats`` runs after warm-up).

    .venv/bin/python bench/pruned_latency.py --arch resnet20 resnet56 vgg16_bn mobilenet_v2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import header, loadavg, write_json  # noqa: E402
from worker.export import export_onnx, onnxruntime_latency  # noqa: E402
from worker.io import zoo  # noqa: E402
from worker.io.data import DataSplits  # noqa: E402
from worker.pruning.channels import prune_channels  # noqa: E402
from worker.pruning.training import count_macs_params  # noqa: E402


def measure(model: torch.nn.Module, path: Path, repeats: int) -> dict:
    model = model.eval()
    example = torch.randn(1, 3, 32, 32)
    macs, params = count_macs_params(model, example)
    export_onnx(model, example, path)
    latency = onnxruntime_latency(path, (3, 32, 32), batch_sizes=(1, 32), repeats=repeats)["batch_sizes"]
    return {
        "macs": macs,
        "params": params,
        "file_bytes": path.stat().st_size,
        "b1_ms": round(latency["1"]["median_ms"], 3),
        "b32_ms": round(latency["32"]["median_ms"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet20", "resnet56", "vgg16_bn", "mobilenet_v2"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--criterion", default="l1", choices=["l1", "spline", "bn_scale", "random"])
    parser.add_argument("--scope", default="layerwise", choices=["layerwise", "global"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of this")
    parser.add_argument("--json")
    args = parser.parse_args()
    header(f"pruned_latency criterion={args.criterion} scope={args.scope} round_to={args.round_to}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 32, 32, generator=gen)
    y = torch.randint(10, (256,), generator=gen)
    data = DataSplits(x, y, x[:64], y[:64], 10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            torch.manual_seed(0)
            dense = measure(zoo.build(arch), Path(tmp) / f"{arch}.onnx", args.repeats)
            base = {"arch": arch, "ratio": 0.0, **dense, "load": loadavg()}
            rows.append(base)
            print(base, flush=True)
            for ratio in args.ratios:
                torch.manual_seed(0)
                model = zoo.build(arch)
                prune_channels(
                    model,
                    data,
                    criterion=args.criterion,
                    ratio=ratio,
                    scope=args.scope,
                    round_to=args.round_to,
                    probes_n=128,
                    compensate=False,
                )
                row = {"arch": arch, "ratio": ratio, **measure(model, Path(tmp) / f"{arch}-{ratio}.onnx", args.repeats)}
                row["mac_reduction"] = round(dense["macs"] / row["macs"], 2)
                row["size_reduction"] = round(dense["file_bytes"] / row["file_bytes"], 2)
                for batch in ("b1", "b32"):
                    speedup = dense[f"{batch}_ms"] / row[f"{batch}_ms"]
                    row[f"{batch}_speedup"] = round(speedup, 2)
                    row[f"{batch}_speedup_over_mac_reduction"] = round(speedup / row["mac_reduction"], 2)
                row["load"] = loadavg()
                rows.append(row)
                print(row, flush=True)
    write_json(args.json, {"criterion": args.criterion, "scope": args.scope, "round_to": args.round_to, "rows": rows})


if __name__ == "__main__":
    main()
