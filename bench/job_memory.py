"""Where a job's memory goes: RSS sampled every 20 ms through the pipeline, per stage.

    .venv/bin/python bench/job_memory.py --case resnet18 --inspect release --json bench/results/job_memory_resnet18.json

Runs one side-by-side case (bench/side_by_side.py: same model, data and spec) in this
process, as a worker's pool process does: optionally the two upload inspections first
(``--inspect keep``: as before, the freed heap stays with the process; ``release``: then
``worker.memory.release_memory``, as the worker now does; ``none``: no inspection), then
``run_pipeline``. Prints the RSS at the start of each stage and its peak within the stage
(VmRSS samples; the kernel's VmHWM is reported too). One torch thread. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, loadavg, write_json  # noqa: E402


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="resnet18", help="a bench/side_by_side.py case")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--inspect", choices=("none", "keep", "release"), default="release")
    parser.add_argument("--distill", type=float, default=0.0, help="finetune.distill (Shears' default: 0.9)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    header(f"job memory: {args.case}, inspections {args.inspect}")

    import torch

    from bench.side_by_side import job_spec, prepare_case
    from service.core.spec import JobSpec
    from worker.memory import release_memory, rss_mib
    from worker.pipeline import PipelineInputs, run_pipeline

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="shears-jobmem-"))
    info = prepare_case(args.case, work / "case", args.size)
    release_memory()
    samples: list[tuple[float, float]] = []
    marks: list[tuple[float, str]] = [(time.perf_counter(), "start")]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss_mib()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if args.inspect != "none":
        from worker.io.datasets import load_dataset_file
        from worker.io.models import inspect_model, load_model

        marks.append((time.perf_counter(), "inspect_model"))
        loaded = load_model(Path(info["model"]))
        inspect_model(loaded.module, loaded.input_shape)
        del loaded
        marks.append((time.perf_counter(), "inspect_dataset"))
        data = load_dataset_file(Path(info["data"]))
        del data
        if args.inspect == "release":
            release_memory()

    def on_progress(event: dict) -> None:
        if "stage" in event and event["stage"] != marks[-1][1]:
            marks.append((time.perf_counter(), event["stage"]))

    marks.append((time.perf_counter(), "job"))
    spec = JobSpec.model_validate(job_spec(info["epochs"], args.distill))
    inputs = PipelineInputs(model_path=Path(info["model"]), dataset_path=Path(info["data"]), device="cpu")
    run_pipeline(inputs, spec, work / "out", on_progress=on_progress)
    marks.append((time.perf_counter(), "end"))
    time.sleep(0.05)
    done.set()
    sampler.join()

    stages = []
    for (begin, name), (end, _) in zip(marks[:-1], marks[1:], strict=False):
        inside = [rss for t, rss in samples if begin <= t <= end] or [0.0]
        stages.append(
            {
                "stage": name,
                "seconds": round(end - begin, 2),
                "rss_start_mib": round(inside[0], 1),
                "peak_mib": round(max(inside), 1),
            }
        )
        print(stages[-1], flush=True)
    result = {
        "case": args.case,
        "inspect": args.inspect,
        "distill": args.distill,
        "stages": stages,
        "vmhwm_mib": round(_hwm_mib(), 1),
        "job_peak_mib": round(max(rss for t, rss in samples if t >= next(b for b, n in marks if n == "job")), 1),
        "load": loadavg(),
    }
    write_json(args.json, result)


if __name__ == "__main__":
    main()
