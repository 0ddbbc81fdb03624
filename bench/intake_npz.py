"""Dataset intake under hostile and large .npz files: (1) the issue-13 bomb, an .npz of
3.66 GiB of uint8 zeros deflated to about 3.8 MB, built on disk without holding it in memory,
then checked as the API checks an upload; (2) the loader's peak memory on an accepted uint8
dataset, as a multiple of its float32 size.

    PYTHONPATH=$PWD .venv/bin/python bench/intake_npz.py
"""

from __future__ import annotations

import resource
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from service.core.intake import Rejected, check_dataset_file


def bomb(path: Path, rows: int = 60_000, cols: int = 65_536) -> int:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            npformat.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": (rows, cols)})
            block = bytes(64 << 20)
            for _ in range(rows * cols // len(block)):
                member.write(block)
        archive.writestr("y.npy", b"")
    return rows * cols


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.npz"
        declared = bomb(path)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            check_dataset_file(path)
            verdict = "accepted"
        except Rejected as error:
            verdict = f"refused {error.code}"
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"bomb: {path.stat().st_size} bytes on disk, {declared} declared; {verdict} in {seconds:.3f} s, "
            f"traced peak {peak} bytes, process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB"
        )

        from worker.io.datasets import load_dataset_file

        x = np.random.default_rng(0).integers(0, 256, (2000, 1, 64, 64), dtype=np.uint8)
        data = Path(tmp) / "uint8.npz"
        np.savez(data, x_train=x, y_train=np.arange(2000) % 2, x_val=x[:10], y_val=np.arange(10) % 2)
        tracemalloc.start()
        load_dataset_file(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"uint8 load: traced peak {peak} bytes = {peak / (x.size * 4):.2f} x the float32 features")


if __name__ == "__main__":
    main()
