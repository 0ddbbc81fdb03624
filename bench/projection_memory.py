"""Extra peak memory (RSS) and time of ProbMask's device projection (``_solve_sorted``) on n
float64 scores, run on the CPU (the same allocations as on a GPU). Asserts nothing.

    .venv/bin/python bench/projection_memory.py --n 20000000
    git show e338315:worker/pruning/probmask.py > /tmp/probmask_e338315.py   # an earlier version
    .venv/bin/python bench/projection_memory.py --n 20000000 --module /tmp/probmask_e338315.py

One measurement per process (peak RSS only rises).
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000_000)
    parser.add_argument("--kept", type=float, default=0.1, help="budget K as a fraction of n")
    parser.add_argument("--module", help="a probmask.py to load instead of worker.pruning.probmask")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.module:
        spec = importlib.util.spec_from_file_location("probmask_under_test", args.module)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        import worker.pruning.probmask as module
    z = torch.rand(args.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5 - 0.2
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    v = module._solve_sorted(z, args.kept * args.n)
    seconds = time.perf_counter() - start
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(
        {
            "module": args.module or "worker.pruning.probmask",
            "n": args.n,
            "v": float(v),
            "scores_MiB": round(args.n * 8 / 2**20),
            "extra_peak_MiB": round(extra),
            "seconds": round(seconds, 2),
        }
    )


if __name__ == "__main__":
    main()
