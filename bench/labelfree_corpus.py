"""Label-free pruning of real corpus models through HTTP only (issue 12, first "Done when").

For each model: a private deployment (bench/common.py: redis, moto S3, SQLite, uvicorn and
one celery worker on one torch thread), an unlabelled image set rendered procedurally for
the model's task (text pages for OCR/text detection, shape scenes for an object detector;
tests/images.py), the model and a flat ``.zip`` of the images uploaded with
``POST /v1/models`` and ``POST /v1/datasets``, one job ``prune_channels`` (l1, 30 % of the
channels) + ``finetune`` (distillation from the dense model over every output, the only
loss without labels), polled to its end. Prints, from ``GET /v1/jobs/{id}/report``, the
per-output fidelity right after pruning and after finetuning, and the MACs.

    .venv/bin/python bench/labelfree_corpus.py [--models nudenet-yolov8n-320 ppocr-det-v4]
        [--images 160] [--steps 60] [--lr 0.01] [--json bench/results/labelfree_corpus.json]

Numbers depend on the machine's load; the script prints the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import deployment, header, loadavg  # noqa: E402
from tests.images import shapes_scene_png, text_document_png, zip_bytes  # noqa: E402

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

# model id → how its unlabelled images are made and how the job preprocesses them
MODELS: dict[str, dict] = {
    "nudenet-yolov8n-320": {
        "what": "object detection (YOLOv8n): boxes + class scores in one output",
        "render": shapes_scene_png,
        "size": (160, 160),  # (width, height); YOLOv8 takes multiples of 32
        "preprocessing": {"resize": [160, 160]},  # RGB scaled to [0, 1], no mean/std (Ultralytics)
    },
    "ppocr-det-v4": {
        "what": "OCR text detection (DB, a per-pixel text probability map)",
        "render": text_document_png,
        "size": (96, 96),  # DB needs multiples of 32
        "preprocessing": {"resize": [96, 96], "channel_order": "bgr", **IMAGENET},  # PaddleOCR det
    },
    "ppocr-rec-v4": {
        "what": "OCR text recognition (CTC): per-step character probabilities",
        "render": text_document_png,
        "size": (160, 48),
        "preprocessing": {"resize": [48, 160], "channel_order": "bgr", "mean": [0.5], "std": [0.5]},
    },
    "ddddocr-det-yolox": {
        "what": "object detection (YOLOX, 416×416 fixed)",
        "render": text_document_png,
        "size": (416, 416),
        "preprocessing": {"resize": [416, 416], "dtype": "uint8"},
    },
}


def image_zip(render: Callable[..., bytes], size: tuple[int, int], count: int) -> bytes:
    """A flat (unlabelled) zip of ``count`` rendered PNGs."""
    width, height = size
    return zip_bytes([(f"images/{i:04d}.png", render(width, height, seed=i)) for i in range(count)])


def job_spec(model_id: str, dataset_id: str, entry: dict, args: argparse.Namespace) -> dict:
    return {
        "model_id": model_id,
        "dataset_id": dataset_id,
        "preprocessing": entry["preprocessing"],
        "pipeline": [
            {"prune_channels": {"criterion": "l1", "ratio": args.ratio}},
            {"finetune": {"steps": args.steps, "lr": args.lr}},
        ],
        "training": {"batch_size": args.batch_size, "val_fraction": 0.25},
        "export": {"formats": ["onnx"]},
        "acceptance": {"max_accuracy_drop": None},
        "seed": 0,
    }


def _wait(client, path: str, done: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (state := client.get(path).json())["status"] not in done:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} still {state['status']} after {timeout:.0f} s")
        time.sleep(0.5)
    return state


def run_one(model_id: str, model_path: Path, args: argparse.Namespace) -> dict:
    """One job through HTTP on a fresh deployment; the report's fidelity and MACs."""
    import httpx

    entry = MODELS[model_id]
    archive = image_zip(entry["render"], entry["size"], args.images)
    load_start = loadavg()
    with deployment(storage="s3", workers=1, worker_env={"OMP_NUM_THREADS": "1"}) as dep:
        with httpx.Client(base_url=dep.base, headers=dep.headers, timeout=120) as client:
            start = time.perf_counter()
            model = client.post("/v1/models", files={"file": (model_path.name, model_path.read_bytes())})
            dataset = client.post("/v1/datasets", files={"file": ("images.zip", archive)})
            model.raise_for_status(), dataset.raise_for_status()
            model_info = _wait(client, f"/v1/models/{model.json()['id']}", {"ready", "invalid"}, 600)
            data_info = _wait(client, f"/v1/datasets/{dataset.json()['id']}", {"ready", "invalid"}, 600)
            if model_info["status"] != "ready" or data_info["status"] != "ready":
                raise RuntimeError(f"upload refused: {model_info.get('error')} {data_info.get('error')}")
            job = client.post("/v1/jobs", json=job_spec(model_info["id"], data_info["id"], entry, args))
            if job.status_code != 202:
                raise RuntimeError(f"job refused: {job.text}")
            state = _wait(client, f"/v1/jobs/{job.json()['id']}", {"succeeded", "failed", "cancelled"}, args.timeout)
            wall = time.perf_counter() - start
            if state["status"] != "succeeded":
                raise RuntimeError(f"job {state['status']}: {state.get('error')}")
            report = client.get(f"/v1/jobs/{state['id']}/report").json()
            html = client.get(f"/v1/jobs/{state['id']}/report.html").text
    fidelity = report["fidelity"]
    return {
        "model": model_id,
        "what": entry["what"],
        "input": [3, entry["size"][1], entry["size"][0]],
        "images": {"train": report["dataset"]["train"], "val": report["dataset"]["val"]},
        "macs": report["macs"],
        "parameters": report["parameters"],
        "after_pruning": fidelity["after_pruning"],
        "after_finetuning": fidelity["final"],
        "improved": fidelity["final"]["fidelity"] > fidelity["after_pruning"]["fidelity"],
        "html_shows_fidelity": "rel. error after finetuning" in html,
        "timings": report["timings"],
        "wall_s": round(wall, 1),
        "load_start": load_start,
        "load_end": loadavg(),
    }


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per output, after pruning → after finetuning."""
    lines = [
        "| model | output (kind, shape) | rel. L2 error | cosine | agreement | headline fidelity | MACs | job wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        before, after = r["after_pruning"], r["after_finetuning"]
        macs = f"{r['macs']['before'] / 1e6:.1f} M → {r['macs']['after'] / 1e6:.1f} M"
        headline = f"{_fmt(before['fidelity'])} → {_fmt(after['fidelity'])}"
        for index, (name, b) in enumerate(before["outputs"].items()):
            a = after["outputs"][name]
            shape = "×".join(str(d) for d in b["shape"])
            first = index == 0
            lines.append(
                f"| {r['model'] if first else ''} | `{name}` ({b['kind']}, {shape}) "
                f"| {_fmt(b['relative_error'])} → {_fmt(a['relative_error'])} "
                f"| {_fmt(b['cosine'])} → {_fmt(a['cosine'])} "
                f"| {_fmt(b['agreement'])} → {_fmt(a['agreement'])} "
                f"| {headline if first else ''} | {macs if first else ''} "
                f"| {str(r['wall_s']) + ' s' if first else ''} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["nudenet-yolov8n-320", "ppocr-det-v4"], choices=list(MODELS))
    parser.add_argument("--images", type=int, default=160, help="rendered images per model (25 %% validation)")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=60, help="finetune budget in optimizer steps")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from worker.corpus import ROOT, fetch

    header("label-free pruning of corpus models through HTTP (issue 12)")
    print(f"# {' '.join(sys.argv)}", flush=True)
    paths = fetch(ROOT / ".corpus", args.models)
    rows = []
    for model_id in args.models:
        row = run_one(model_id, paths[model_id], args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows))
    print(f"# load average at end: {loadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    if not all(r["improved"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
