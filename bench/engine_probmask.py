"""Engine costs on CPU: a ProbMask training step vs the same dense step, the global
projection (exact vs bisection), spline scoring and early-bird checks vs training, and
the memory of region codes (packed bits vs float).

    .venv/bin/python bench/engine_probmask.py --what step projection earlybird codes

Steps mirror ``worker.pruning.training.train``'s loop body (zero_grad, forward, cross-entropy,
backward, [clip], SGD step, [Adam step on the scores + projection]) on random 32×32
data; the ProbMask step is measured at a mid-schedule epoch (budget K < n, so the
projection is active). Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import header, loadavg, percentile, write_json  # noqa: E402
from worker.io import zoo  # noqa: E402
from worker.io.data import DataSplits  # noqa: E402
from worker.pruning.probmask import ProbMaskSparsifier, project_scores_  # noqa: E402


def _data(n: int, num_classes: int = 10, seed: int = 0) -> DataSplits:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(num_classes, (n,), generator=gen)
    return DataSplits(x, y, x[:256], y[:256], num_classes)


def _median_ms(times: list[float]) -> float:
    return round(1000 * percentile(times, 50), 2)


def step_times(arch: str, width: float, batch: int, steps: int, warmup: int, mask_samples: int = 1) -> dict:
    """Median time per training step: dense vs ProbMask (with a breakdown). The two models
    take their steps alternately (dense, ProbMask, dense, ...), so both see the same
    background load of this shared machine."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(10, (batch,))
    out: dict = {
        "arch": arch,
        "width": width,
        "batch": batch,
        "steps": steps,
        "mask_samples": mask_samples,
        "threads": torch.get_num_threads(),
    }

    dense_model = zoo.build(arch, width=width).train()
    out["params"] = sum(p.numel() for p in dense_model.parameters())
    dense_opt = torch.optim.SGD(dense_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def dense_step() -> None:
        dense_opt.zero_grad(set_to_none=True)
        F.cross_entropy(dense_model(x), y).backward()
        dense_opt.step()

    model = zoo.build(arch, width=width).train()
    sparsifier = ProbMaskSparsifier(model, 0.9).prepare()
    sparsifier.set_epoch(8, 30)  # mid-schedule: τ < 1 and K(e) < n
    scores = sparsifier.score_parameters()
    score_ids = {id(p) for p in scores}
    weights = [p for p in model.parameters() if id(p) not in score_ids]
    out["masked_weights"] = sparsifier.n
    opt = torch.optim.SGD(weights, lr=0.01, momentum=0.9, weight_decay=5e-4)
    score_opt = torch.optim.Adam(scores, lr=6e-3)
    parts: dict[str, list[float]] = {k: [] for k in ("forward_backward", "clip", "sgd", "adam", "projection", "total")}

    def probmask_step(record: bool) -> None:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        score_opt.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for _ in range(mask_samples):
            loss = loss + F.cross_entropy(model(x), y) / mask_samples
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(weights + scores, 3.0)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        score_opt.step()
        t4 = time.perf_counter()
        sparsifier.step()
        t5 = time.perf_counter()
        if record:
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0), strict=True):
                parts[key].append(value)

    dense: list[float] = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        dense_step()
        if i >= warmup:
            dense.append(time.perf_counter() - start)
        probmask_step(record=i >= warmup)
    out["dense_step_ms"] = _median_ms(dense)
    out["probmask_step_ms"] = _median_ms(parts["total"])
    out["probmask_breakdown_ms"] = {k: _median_ms(v) for k, v in parts.items() if k != "total"}
    out["ratio_probmask_to_dense"] = round(out["probmask_step_ms"] / out["dense_step_ms"], 3)
    pairs = [p / d for p, d in zip(parts["total"], dense, strict=True)]
    out["ratio_median_of_pairs"] = round(percentile(pairs, 50), 3)
    out["load"] = loadavg()
    return out


def projection_times(sizes: list[int], repeats: int) -> list[dict]:
    """Global projection of n scores onto Σ s ≤ K: exact (sort) vs bisection (20 passes)."""
    rows = []
    for n in sizes:
        gen = torch.Generator().manual_seed(0)
        base = torch.rand(n, generator=gen) * 1.2  # after an Adam step: some scores above 1
        chunks = list(torch.split(base, max(1, n // 13)))  # ~13 layers like a ResNet/VGG
        row: dict = {"n": n}
        for method in ("exact", "bisect"):
            times = []
            v = None
            for _ in range(repeats):
                scores = [c.clone() for c in chunks]
                start = time.perf_counter()
                v = project_scores_(scores, 0.3 * n, method)
                times.append(time.perf_counter() - start)
            kept = float(sum(s.sum() for s in scores))
            row[method] = {
                "median_ms": _median_ms(times),
                "v": round(v, 6),
                "kept_over_budget": round(kept / (0.3 * n), 6),
            }
        row["load"] = loadavg()
        rows.append(row)
        print(row, flush=True)
    return rows


def earlybird_times(arch: str, width: float, batch: int, train_n: int, probes: int) -> dict:
    """One epoch of dense training vs one spline early-bird check (region codes of
    ``probes`` inputs + distances to the 3 earlier epochs), one BN check, and spline
    channel scoring (worker.pruning.channels.score_layers, criterion spline)."""
    from worker.pruning.channels import score_layers
    from worker.pruning.early_bird import BNScaleDetector, SplineDetector
    from worker.pruning.layers import discover_layers
    from worker.pruning.regions import select_probes
    from worker.pruning.training import TrainConfig, train

    torch.manual_seed(0)
    data = _data(train_n)
    model = zoo.build(arch, width=width)
    start = time.perf_counter()
    train(model, data, TrainConfig(epochs=1, lr=0.01, batch_size=batch))
    epoch_s = time.perf_counter() - start
    layers = discover_layers(model)
    probe_x = select_probes(data.x_train, probes, seed=0)
    spline = SplineDetector(probe_x, layers, threshold=0.16, window=3)
    checks = []
    for _ in range(4):  # the 4th check compares with 3 held epochs
        start = time.perf_counter()
        spline.step(model)
        checks.append(time.perf_counter() - start)
    bn = BNScaleDetector(ratio=0.5, threshold=0.1, window=3)
    bn_checks = []
    for _ in range(4):
        start = time.perf_counter()
        bn.step(model)
        bn_checks.append(time.perf_counter() - start)
    prunable = [layer for layer in layers if layer.out_features > 1][:-1]
    start = time.perf_counter()
    score_layers(model, prunable, "spline", probe_x, seed=0)
    spline_scoring_s = time.perf_counter() - start
    start = time.perf_counter()
    score_layers(model, prunable, "l1", None, seed=0)
    l1_s = time.perf_counter() - start
    steps = -(-train_n // batch)
    return {
        "arch": arch,
        "width": width,
        "batch": batch,
        "train_samples": train_n,
        "probes": probes,
        "epoch_s": round(epoch_s, 3),
        "step_s": round(epoch_s / steps, 4),
        "spline_check_s": round(checks[-1], 3),
        "spline_check_first_s": round(checks[0], 3),
        "bn_check_ms": round(1000 * bn_checks[-1], 3),
        "spline_check_over_epoch": round(checks[-1] / epoch_s, 3),
        "spline_check_over_cifar10_epoch_est": round(checks[-1] / (epoch_s / steps * (-(-50000 // batch))), 4),
        "spline_scoring_s": round(spline_scoring_s, 3),
        "l1_scoring_ms": round(1000 * l1_s, 2),
        "load": loadavg(),
    }


def code_memory(arch: str, width: float, probes: int, max_positions: int) -> dict:
    """Region codes of a VGG-16-sized model: packed bits (what Shears keeps) vs float32
    pre-activations and bool codes of the same (probe, unit, position) entries."""
    import resource

    from worker.pruning.layers import discover_layers
    from worker.pruning.regions import compute_region_codes

    torch.manual_seed(0)
    model = zoo.build(arch, width=width).eval()
    layers = discover_layers(model)
    x = torch.randn(probes, 3, 32, 32)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    codes = compute_region_codes(model, x, layers, max_positions=max_positions)
    seconds = time.perf_counter() - start
    entries = sum(c.units * c.bits for c in codes.values())
    packed = sum(c.packed.nbytes for c in codes.values())
    return {
        "arch": arch,
        "width": width,
        "probes": probes,
        "max_positions": max_positions,
        "layers": len(codes),
        "units": sum(c.units for c in codes.values()),
        "entries": entries,
        "packed_MiB": round(packed / 2**20, 2),
        "bool_MiB": round(entries / 2**20, 2),
        "float32_MiB": round(4 * entries / 2**20, 2),
        "float32_over_packed": round(4 * entries / packed, 1),
        "seconds": round(seconds, 2),
        "peak_rss_growth_MiB": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1),
        "load": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--what",
        nargs="+",
        default=["step", "projection", "earlybird", "codes"],
        choices=["step", "projection", "earlybird", "codes"],
    )
    parser.add_argument("--arch", nargs="+", default=["resnet20", "vgg16_bn"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mask-samples", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[270_000, 1_000_000, 15_000_000])
    parser.add_argument("--train-n", type=int, default=2560)
    parser.add_argument("--probes", type=int, default=512)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    header(f"engine_probmask torch {torch.__version__} threads {torch.get_num_threads()}")
    results: dict = {}
    if "step" in args.what:
        results["step"] = []
        for arch in args.arch:
            for samples in args.mask_samples:
                row = step_times(arch, args.width, args.batch, args.steps, args.warmup, samples)
                print(row, flush=True)
                results["step"].append(row)
    if "projection" in args.what:
        results["projection"] = projection_times(args.sizes, repeats=5)
    if "earlybird" in args.what:
        results["earlybird"] = []
        for arch in args.arch:
            row = earlybird_times(arch, args.width, args.batch, args.train_n, args.probes)
            print(row, flush=True)
            results["earlybird"].append(row)
    if "codes" in args.what:
        results["codes"] = code_memory("vgg16_bn", 1.0, args.probes, 64)
        print(results["codes"], flush=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
