"""GPU benchmark (CUDA): training images/s dense vs ProbMask on ResNet-32 and VGG-19 with
random 32×32 data, peak GPU memory of each, and pruned-model latency on the GPU (torch,
eval, batch 1 and 128) before/after structured pruning.

Needs a CUDA device (``torch.cuda.is_available()``); exits with a message otherwise.
``--device cpu`` runs the same code on the CPU (bench/gpu_check.py's self-test, tiny sizes).

    .venv/bin/python bench/engine_gpu.py --arch resnet32 vgg19_bn --batch 128 --steps 50

Steps mirror worker.pruning.training.train's loop body (the same as bench/engine_probmask.py); the
ProbMask step includes the global projection (exact, on the device) after every Adam step,
and is measured mid-schedule (K < n). Timings: wall clock around device-synchronised loops after warm-up, with
``torch.backends.cudnn.benchmark`` on. Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import header, loadavg, write_json  # noqa: E402
from worker.io import zoo  # noqa: E402
from worker.io.data import DataSplits  # noqa: E402
from worker.pruning.probmask import ProbMaskSparsifier  # noqa: E402


def _train_rate(arch: str, batch: int, steps: int, warmup: int, probmask: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = zoo.build(arch).to(device).train()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(10, (batch,), device=device)
    extra: list[torch.nn.Parameter] = []
    sparsifier = None
    if probmask:
        sparsifier = ProbMaskSparsifier(model, 0.9).prepare()
        sparsifier.configure_schedule(30, 100)  # as the training loop does: eval masks refresh once per epoch
        sparsifier.set_epoch(8)
        extra = sparsifier.score_parameters()
    ids = {id(p) for p in extra}
    weights = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.SGD(weights, lr=0.01, momentum=0.9, weight_decay=5e-4)
    score_opt = torch.optim.Adam(extra, lr=6e-3) if extra else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if score_opt is not None:
            score_opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if probmask:
            torch.nn.utils.clip_grad_norm_(weights + extra, 3.0)
        opt.step()
        if score_opt is not None:
            score_opt.step()
            sparsifier.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    return {
        "images_per_s": round(batch * steps / seconds, 1),
        "step_ms": round(1000 * seconds / steps, 2),
        "peak_mem_MiB": peak,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _latency_ms(model: torch.nn.Module, batch: int, device: torch.device, repeats: int = 50) -> float:
    model = model.to(device).eval()
    x = torch.randn(batch, 3, 32, 32, device=device)
    for _ in range(min(10, repeats)):
        model(x)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return round(times[len(times) // 2], 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet32", "vgg19_bn"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (bench/gpu_check.py's self-test)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (torch.cuda.is_available() is False)")
        sys.exit(2)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header(f"engine_gpu {name} torch {torch.__version__}")
    from worker.pruning.channels import prune_channels

    results: dict = {"device": name, "train": [], "latency": []}
    for arch in args.arch:
        dense = _train_rate(arch, args.batch, args.steps, args.warmup, False, device)
        masked = _train_rate(arch, args.batch, args.steps, args.warmup, True, device)
        row = {
            "arch": arch,
            "batch": args.batch,
            "dense": dense,
            "probmask": masked,
            "probmask_over_dense_step": round(masked["step_ms"] / dense["step_ms"], 3),
            "load": loadavg(),
        }
        results["train"].append(row)
        print(row, flush=True)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(256, 3, 32, 32, generator=gen)
        y = torch.randint(10, (256,), generator=gen)
        data = DataSplits(x, y, x[:64], y[:64], 10)
        for ratio in [0.0, *args.ratios]:
            torch.manual_seed(0)
            model = zoo.build(arch)
            if ratio:
                prune_channels(
                    model, data, criterion="l1", ratio=ratio, scope="layerwise", probes_n=128, compensate=False
                )
            lat = {
                "arch": arch,
                "ratio": ratio,
                "b1_ms": _latency_ms(model, 1, device, args.latency_repeats),
                f"b{args.batch}_ms": _latency_ms(model, args.batch, device, args.latency_repeats),
            }
            results["latency"].append(lat)
            print(lat, flush=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
