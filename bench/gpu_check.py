"""The GPU path measured in one command, the first time a CUDA machine is available.

    python3 bench/gpu_check.py --json bench/results/gpu_check.json          # on the GPU machine
    .venv/bin/python bench/gpu_check.py --device cpu --size tiny --json x   # the self-test

From a fresh clone: runs scripts/bootstrap.sh when ``.venv`` has no importable torch
(``--bootstrap auto``), then, each step a child process under its own time limit so one
failure or hang costs only its share, all within eight minutes on the GPU:

1. ``env``: torch, CUDA and the device, ``nvidia-smi``.
2. ``engine_tests``: the engine's test suite (tests/worker) on that machine, where every
   engine entry point with ``device="auto"`` picks CUDA.
3. ``probmask_step``: dense vs ProbMask training step, images/s and peak memory
   (bench/engine_gpu.py), and pruned-model latency on the device.
4. ``side_by_side``: the bare Torch-Pruning script vs ``shears prune`` on MNIST-1D's CNN and
   a ResNet-18 at 224 (bench/side_by_side.py, ``--device``).
5. ``parity``: the same seeded training on the CPU and on the device (bench/gpu_parity.py).

Writes one JSON file: per step its exit code, seconds, result (the step's JSON) or the tail
of its output. ``--device cpu --size tiny`` runs the very same steps on the CPU with tiny
sizes; tests/bench/test_gpu_check.py runs it in ``make test``, so the script cannot rot
before a device is lent. Needs only the standard library itself (it starts before the
bootstrap).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 480  # eight minutes for the steps below, on the GPU


def _venv_python() -> Path:
    return REPO_ROOT / ".venv" / "bin" / "python"


def _torch_importable(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, timeout=300)
    return probe.returncode == 0


def bootstrap(mode: str) -> dict:
    """Install .venv with scripts/bootstrap.sh unless it is there already (``auto``)."""
    if mode == "never" or (mode == "auto" and _torch_importable(_venv_python())):
        return {"ran": False}
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "bootstrap.sh")], cwd=REPO_ROOT, capture_output=True, text=True
    )
    return {
        "ran": True,
        "rc": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "tail": (done.stdout + done.stderr)[-2000:],
    }


def steps(device: str, size: str, out: Path) -> list[tuple[str, list[str], int, Path | None]]:
    """(name, argv after the interpreter, time limit s, JSON the step writes) of every step."""
    tiny = size == "tiny"
    env_probe = (
        "import json, torch; cuda = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
        "'cuda': cuda, 'cuda_version': torch.version.cuda, 'device_count': torch.cuda.device_count(), "
        "'device_name': torch.cuda.get_device_name(0) if cuda else None, 'threads': torch.get_num_threads()}))"
    )
    tests = ["tests/worker/pruning/training/test_loop.py", "-k", "device"] if tiny else ["tests/worker"]
    probmask = (
        [
            "--arch",
            "resnet20",
            "--batch",
            "8",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--ratios",
            "0.5",
            "--latency-repeats",
            "3",
        ]
        if tiny
        else ["--arch", "resnet32", "vgg19_bn", "--batch", "128", "--steps", "50", "--ratios", "0.5"]
    )
    return [
        ("env", ["-c", env_probe], 60, None),
        ("engine_tests", ["-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], 200, None),
        (
            "probmask_step",
            ["bench/engine_gpu.py", "--device", device, *probmask, "--json", str(out / "probmask.json")],
            60,
            out / "probmask.json",
        ),
        (
            "side_by_side",
            [
                "bench/side_by_side.py",
                "--device",
                device,
                "--size",
                size,
                "--paths",
                "bare",
                "prune",
                "--cases",
                "mnist1d",
                "resnet18",
                "--json",
                str(out / "side_by_side.json"),
            ],
            180,
            out / "side_by_side.json",
        ),
        (
            "parity",
            ["bench/gpu_parity.py", "--device", device, "--json", str(out / "parity.json")],
            30,
            out / "parity.json",
        ),
    ]


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def run_step(python: Path, argv: list[str], limit_s: float, result_path: Path | None) -> dict:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(
            [str(python), *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=limit_s, env=env
        )
        rc, stdout, output = done.returncode, done.stdout, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        rc, stdout = "timeout", ""
        output = _text(expired.stdout) + _text(expired.stderr)
    record: dict = {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "limit_s": limit_s}
    if result_path is not None and result_path.exists():
        record["result"] = json.loads(result_path.read_text())
    elif rc == 0 and stdout.strip().startswith("{"):
        record["result"] = json.loads(stdout.strip().splitlines()[-1])
    if rc != 0 or "result" not in record:
        record["tail"] = output[-3000:]
    return record


def gpu_check(device: str = "cuda", size: str = "full", bootstrap_mode: str = "auto", scale: float = 1.0) -> dict:
    """Every step's record; ``scale`` multiplies the time limits (the CPU self-test's machine
    may be loaded)."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"shears-gpu-check-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "device": device,
        "size": size,
        "budget_s": BUDGET_S * scale,
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bootstrap": bootstrap(bootstrap_mode),
    }
    if report["bootstrap"].get("rc", 0) != 0:
        report["ok"] = False
        return report
    python = _venv_python() if _venv_python().exists() else Path(sys.executable)
    report["python"] = str(python)
    with open("/proc/loadavg") if Path("/proc/loadavg").exists() else open(os.devnull) as handle:
        report["load_start"] = handle.read().strip()
    try:
        report["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        report["nvidia_smi"] = None
    start = time.perf_counter()
    report["steps"] = {}
    for name, argv, limit, result in steps(device, size, out):
        left = BUDGET_S * scale - (time.perf_counter() - start)
        if left <= 5:
            report["steps"][name] = {"rc": "skipped", "reason": "the eight-minute budget is spent"}
            continue
        report["steps"][name] = run_step(python, argv, min(limit * scale, left), result)
        print(f"# {name}: rc {report['steps'][name]['rc']} in {report['steps'][name]['seconds']} s", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = all(step.get("rc") == 0 for step in report["steps"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the self-test)")
    parser.add_argument("--size", choices=("full", "tiny"), default=None, help="default: full on cuda, tiny on cpu")
    parser.add_argument("--bootstrap", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every time limit (loaded machines)")
    parser.add_argument("--json", default=str(REPO_ROOT / "bench" / "results" / "gpu_check.json"))
    args = parser.parse_args(argv)
    size = args.size or ("tiny" if args.device == "cpu" else "full")
    report = gpu_check(args.device, size, args.bootstrap, args.time_scale)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print(f"# gpu_check {'passed' if report['ok'] else 'FAILED'}: {args.json}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
