"""ONNX export (single file, dynamic batch), onnxruntime parity and latency."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from worker.export.signature import restore_signature

EXPORTER_KEY = "shears.exporter"
SIGNATURE_KEY = "shears.signature"
BATCH_NAME = "batch"


class ExportError(RuntimeError):
    """Neither exporter produced a valid single-file ONNX model."""


def _batch_is_dynamic(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if not inputs:
        return False
    for value in list(inputs) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _io_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Input/output names: the uploaded ONNX's own (``shears_onnx_io``), else ``input``/``output``."""
    signature = getattr(model, "shears_onnx_io", None)
    if signature is None:
        return ["input"], ["output"]
    return [t.name for t in signature.inputs], [t.name for t in signature.outputs]


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    dynamic_shapes = ({0: torch.export.Dim(BATCH_NAME, min=1, max=1 << 20)},) if dynamic_batch else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            input_names=_io_names(model)[0],
            output_names=_io_names(model)[1],
            verbose=False,
        )


def _export_legacy(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    inputs, outputs = _io_names(model)
    axes = {name: {0: BATCH_NAME} for name in inputs + outputs} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=min(opset, 20),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
        )


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: Path,
    opset: int = 18,
    dynamic_batch: bool = True,
    *,
    prefer: str | None = None,
) -> Path:
    """Export ``model`` to ONE ``.onnx`` file (no external data), input ``input``, output ``output``.

    Tries torch's dynamo exporter (``dynamic_shapes`` on the batch axis) first and falls
    back to the legacy TorchScript exporter (``dynamic_axes``); a model converted from an
    uploaded ONNX file (``shears_onnx_io``: an onnx2torch graph, no Python control flow of its
    own) goes the other way round, legacy first: dynamo fails on most such graphs and costs
    seconds when it succeeds (8.2 s vs 0.09 s on the e2e's digits CNN). The exporter used is
    recorded in the model's ``metadata_props`` under ``shears.exporter`` (read it with
    ``onnx_export_info``). The result passes ``onnx.checker.check_model``. ``prefer``
    (``"dynamo"`` or ``"legacy"``) overrides that order: the target search times many candidates
    and asks for the legacy exporter, ~20× faster on small models.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model = model.eval()
    example = example_input.detach()
    if dynamic_batch and example.shape[0] < 2:  # batch 1 makes torch.export specialise the axis
        example = torch.cat([example, example], 0)
    errors: list[str] = []
    try:
        for name, exporter in _exporters(model, prefer):
            for leftover in (path, path.with_name(path.name + ".data")):
                leftover.unlink(missing_ok=True)
            try:
                exporter(model, example, path, opset, dynamic_batch)
                proto = onnx.load_model(str(path), load_external_data=False)
                if _has_external_data(proto):
                    raise ExportError("the export wrote external data")
                if dynamic_batch and not _batch_is_dynamic(proto):
                    raise ExportError("the batch dimension is not dynamic")
                onnx.checker.check_model(proto)
            except Exception as exc:  # try the next exporter
                errors.append(
                    f"{name}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
                )
                continue
            del proto.metadata_props[:]
            props = {EXPORTER_KEY: name, "shears.opset": str(_opset(proto)), "shears.torch": torch.__version__}
            signature = getattr(model, "shears_onnx_io", None)
            if signature is not None:  # the uploaded ONNX's names, order, dtypes and axes
                onnx.save_model(proto, str(path))
                props[SIGNATURE_KEY] = json.dumps(restore_signature(path, signature))
                proto = onnx.load_model(str(path), load_external_data=False)
            onnx.helper.set_model_props(proto, props)
            onnx.save_model(proto, str(path))
            onnx.checker.check_model(str(path))
            return path
    finally:
        model.train(was_training)
    raise ExportError("ONNX export failed with both exporters: " + "; ".join(errors))


def _exporters(model: nn.Module, prefer: str | None = None) -> list[tuple[str, Any]]:
    """The exporters to try, in order (see :func:`export_onnx`)."""
    order = [("dynamo", _export_dynamo), ("legacy", _export_legacy)]
    if prefer is None:
        prefer = "legacy" if getattr(model, "shears_onnx_io", None) is not None else "dynamo"
    return order if prefer == "dynamo" else order[::-1]


def _opset(proto: onnx.ModelProto) -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def onnx_export_info(path: Path) -> dict[str, Any]:
    """Exporter used, opset, and whether the batch axis is dynamic, for an exported file."""
    proto = onnx.load_model(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return {
        "exporter": props.get(EXPORTER_KEY),
        "opset": _opset(proto),
        "dynamic_batch": _batch_is_dynamic(proto),
        "single_file": not _has_external_data(proto),
        "inputs": [v.name for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}],
        "outputs": [v.name for v in proto.graph.output],
        **({"signature": json.loads(props[SIGNATURE_KEY])} if SIGNATURE_KEY in props else {}),
    }


def _session(path: Path, threads: int | None = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _flat_outputs(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flat_outputs(item)]
    return []


def check_onnx_parity(
    model: nn.Module, path: Path, inputs: torch.Tensor, *, rtol: float = 1e-3, atol: float = 1e-4
) -> dict[str, Any]:
    """Compare torch (eval mode) and onnxruntime on EVERY output, at batch 1 and ``len(inputs)``.

    Per output, ``max_abs_diff <= atol + rtol * max|torch output|``; ``passed`` when all
    outputs pass (and their count and shapes agree). ``outputs`` lists each one.
    """
    was_training = model.training
    model.eval()
    session = _session(path)
    feed = session.get_inputs()[0]
    names = [o.name for o in session.get_outputs()]
    batches = sorted({1, int(inputs.shape[0])})
    per_output: dict[str, dict[str, float]] = {}
    error = None
    try:
        for batch in batches:
            x = inputs[:batch].detach()
            with torch.no_grad():
                refs = [r.detach().cpu().numpy() for r in _flat_outputs(model(x))]
            got = session.run(None, {feed.name: x.cpu().numpy()})
            if len(got) != len(refs):
                error = f"{len(got)} ONNX outputs for {len(refs)} torch outputs"
                break
            for name, ref, out in zip(names, refs, got, strict=True):
                if out.shape != ref.shape:
                    error = f"output {name!r}: shape {list(out.shape)} != {list(ref.shape)} at batch {batch}"
                    break
                entry = per_output.setdefault(name, {"max_abs_diff": 0.0, "max_ref": 0.0})
                if ref.size:
                    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
                    entry["max_abs_diff"] = max(entry["max_abs_diff"], float(np.max(diff)))
                    entry["max_ref"] = max(entry["max_ref"], float(np.max(np.abs(ref))))
            if error:
                break
    finally:
        model.train(was_training)
    outputs = [
        {
            "name": name,
            "max_abs_diff": e["max_abs_diff"],
            "tolerance": atol + rtol * e["max_ref"],
            "passed": e["max_abs_diff"] <= atol + rtol * e["max_ref"],
        }
        for name, e in per_output.items()
    ]
    if error:
        return {
            "max_abs_diff": float("inf"),
            "tolerance": atol,
            "passed": False,
            "batch_sizes_checked": batches,
            "error": error,
            "outputs": outputs,
        }
    worst = max(outputs, key=lambda o: o["max_abs_diff"] - o["tolerance"]) if outputs else None
    return {
        "max_abs_diff": worst["max_abs_diff"] if worst else 0.0,
        "tolerance": worst["tolerance"] if worst else atol,
        "passed": bool(outputs) and all(o["passed"] for o in outputs),
        "batch_sizes_checked": batches,
        "outputs": outputs,
    }


def onnxruntime_latency(
    path: Path,
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 50,
    *,
    warmup: int = 1,
    threads: int | None = 1,
    seed: int = 0,
    budget_s: float = 1.5,
    rel_tolerance: float = 0.05,
) -> dict[str, Any]:
    """Median/min/p90 wall time (ms) of ``session.run`` per batch size, bounded in time.

    Each batch size gets ``budget_s`` seconds (warmup included) and at most ``repeats`` runs,
    and stops early once its median is known to ``±rel_tolerance`` (95% interval;
    :func:`worker.export.latency.bounded_latency`); ``stable``, ``ci95_ms`` and ``ci_rel``
    report how precise each median is. ``input_shape`` is per sample; ``threads=1``
    (default) pins onnxruntime to one intra-op thread so numbers are comparable across
    machines and runs; ``None`` lets it choose.
    """
    from worker.export.latency import bounded_latency

    session = _session(path, threads)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        results[str(batch)] = bounded_latency(
            lambda x=x: session.run(None, {name: x}),
            budget_s=budget_s,
            min_repeats=min(5, max(1, repeats)),
            max_repeats=max(1, repeats),
            warmup=warmup,
            rel_tolerance=rel_tolerance,
        )
    import onnxruntime as ort

    return {
        "batch_sizes": results,
        "threads": threads,
        "warmup": warmup,
        "budget_s": budget_s,
        "provider": "CPUExecutionProvider",
        "onnxruntime": ort.__version__,
    }
