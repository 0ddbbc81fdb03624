"""A/B of label-free engine defaults on one corpus model, without the service: the job
pipeline (worker.pipeline.run_pipeline, the code a worker runs) on the same rendered images
as bench/labelfree_corpus.py, on one torch thread. ``--kinds`` declares output kinds (e.g.
``'{"sigmoid_0.tmp_0": "regression"}'`` for the L2 instead of the Bernoulli KL);
``--fixed-clip`` replaces the adaptive clip (AutoClip) by a fixed gradient-norm clip.
``--slices 0:4,4:22`` also compares the exported model with the dense ONNX file in
onnxruntime on 32 held-out rendered images, per slice of dim 1 of the first output (YOLOv8's
``output0`` holds 4 box rows then the class-score rows); ``--steps 0`` skips finetuning.

    .venv/bin/python bench/labelfree_engine.py --model ppocr-det-v4 [--size 64 64] [--images 40]
        [--steps 20] [--batch-size 8] [--kinds JSON] [--fixed-clip 5] [--slices 0:4,4:22]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench.common import loadavg  # noqa: E402
from bench.labelfree_corpus import MODELS, image_zip  # noqa: E402


class _FixedClip:
    """The old default: clip the global gradient norm at a constant (a callback like AutoClip)."""

    order = 10

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def after_backward(self, state) -> None:
        torch.nn.utils.clip_grad_norm_(state.trainable, self.limit)


def slice_fidelity(dense: Path, pruned: Path, entry: dict, size: tuple[int, int], slices: str) -> dict:
    """Relative L2 error and mean cosine of the first output, per ``start:stop`` slice of dim 1,
    between two ONNX files on 32 held-out rendered images (seeds 10000+)."""
    import io

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from service.core.spec import PreprocessingParams
    from worker.io.images import preprocess

    params = PreprocessingParams(**{**entry["preprocessing"], "resize": [size[1], size[0]]})
    x = np.stack(
        [preprocess(Image.open(io.BytesIO(entry["render"](*size, seed=10_000 + i))), params) for i in range(32)]
    ).astype(np.float32)
    outputs = []
    for path in (dense, pruned):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64))
    result = {}
    for part in slices.split(","):
        start, stop = (int(v) for v in part.split(":"))
        t, s = outputs[0][:, start:stop].reshape(len(x), -1), outputs[1][:, start:stop].reshape(len(x), -1)
        cosine = (t * s).sum(1) / np.maximum(np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1), 1e-300)
        result[part] = {
            "relative_error": round(float(np.linalg.norm(s - t) / np.linalg.norm(t)), 4),
            "cosine": round(float(cosine.mean()), 4),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ppocr-det-v4", choices=list(MODELS))
    parser.add_argument("--size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kinds", type=json.loads, default={})
    parser.add_argument("--fixed-clip", type=float)
    parser.add_argument("--slices", help="e.g. 0:4,4:22: fidelity per slice of dim 1 of the first output")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import worker.pruning.stages.finetune as finetune
    from service.core.spec import JobSpec
    from worker.corpus import ROOT, fetch
    from worker.pipeline import PipelineInputs, run_pipeline

    if args.fixed_clip is not None:
        finetune.AutoClip = lambda: _FixedClip(args.fixed_clip)  # type: ignore[assignment]
    entry = MODELS[args.model]
    width, height = args.size or entry["size"]
    preprocessing = {**entry["preprocessing"], "resize": [height, width]}
    spec = JobSpec.model_validate(
        {
            "preprocessing": preprocessing,
            "pipeline": [
                {"prune_channels": {"criterion": "l1", "ratio": 0.3}},
                {"finetune": {"steps": args.steps, "lr": args.lr} if args.steps else {"epochs": 0}},
            ],
            "distillation": {"kinds": args.kinds},
            "training": {"batch_size": args.batch_size, "val_fraction": 0.25},
            "export": {"formats": ["onnx"]},
            "acceptance": {"max_accuracy_drop": None},
        }
    )
    model = fetch(ROOT / ".corpus", [args.model])[args.model]
    print(f"# {' '.join(sys.argv)}; load average at start: {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="shears-lf-") as tmp:
        data = Path(tmp) / "images.zip"
        data.write_bytes(image_zip(entry["render"], (width, height), args.images))
        start = time.perf_counter()
        report = run_pipeline(PipelineInputs(model_path=model, dataset_path=data, device="cpu"), spec, Path(tmp)).report
        row = {"model": args.model, "seconds": round(time.perf_counter() - start, 1), "load_end": loadavg()}
        if args.slices:
            row["held_out_slices"] = slice_fidelity(
                model, Path(tmp) / "model.onnx", entry, (width, height), args.slices
            )
    for stage in ("after_pruning", "final"):
        fidelity = report["fidelity"][stage]
        if fidelity is None:
            continue
        row[stage] = {
            "fidelity": round(fidelity["fidelity"], 4),
            **{
                name: {k: round(v, 4) for k, v in out.items() if isinstance(v, float)} | {"kind": out["kind"]}
                for name, out in fidelity["outputs"].items()
            },
        }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
