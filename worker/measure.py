"""What the report compares before and after: accuracy, size, MACs, onnxruntime latency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from service.core.spec import ExportParams
from worker.io.data import DataSplits
from worker.pruning.training import count_macs_params, evaluate


def measure(
    model: nn.Module,
    data: DataSplits,
    example: torch.Tensor,
    device: torch.device,
    onnx_path: Path,
    export: ExportParams,
    source_onnx: Path | None = None,
) -> dict:
    """Validation/test accuracy (None without labels), MACs, parameters, file sizes and onnxruntime latency of
    ``model``, exported to ``onnx_path`` on the way (the model ends on the CPU).

    With ``source_onnx`` (the uploaded ONNX file of this same model, single file, dynamic
    batch) size and latency are those of that file and no export is made: re-exporting the
    dense model only to time it cost as much as the final export (``latency.source``)."""
    from worker.export import export_onnx, file_sizes, onnxruntime_latency

    example = example.float() if example.dtype == torch.uint8 else example
    batch_sizes = tuple(export.latency_batch_sizes)
    latency = None
    if _usable_source(source_onnx, export.dynamic_batch):
        try:
            latency = {
                **onnxruntime_latency(source_onnx, tuple(data.input_shape), batch_sizes=batch_sizes),
                "source": "uploaded",
            }
            onnx_path = source_onnx
        except Exception:  # noqa: BLE001 - onnxruntime cannot run the upload: time our export instead
            latency = None
    if latency is None:
        export_onnx(model.cpu().eval(), example, onnx_path, opset=export.opset, dynamic_batch=export.dynamic_batch)
        latency = {
            **onnxruntime_latency(onnx_path, tuple(data.input_shape), batch_sizes=batch_sizes),
            "source": "exported",
        }
    # the gzip size (seconds for a large file; zlib releases the GIL) is taken while the model is
    # evaluated, after the latency runs so that it does not disturb them
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gzip-size") as pool:
        sizes = pool.submit(file_sizes, onnx_path)
        model = model.to(device).eval()
        accuracy = evaluate(model, data.x_val, data.y_val, device=device) if data.y_val is not None else None
        test_accuracy = evaluate(model, data.x_test, data.y_test, device=device) if data.y_test is not None else None
        macs, params = count_macs_params(model, example.to(device))
        model.cpu()
        file = sizes.result()
    return {
        "accuracy": accuracy,
        "test_accuracy": test_accuracy,
        "macs": macs,
        "params": params,
        "file": file,
        "latency_ms": latency,
    }


def _usable_source(path: Path | None, dynamic_batch: bool) -> bool:
    """Whether an uploaded ONNX file can stand for the dense model in the latency measurement:
    a single file whose batch axis is dynamic when batch 32 is measured."""
    from worker.export import onnx_export_info

    if path is None:
        return False
    try:
        info = onnx_export_info(path)
    except Exception:  # noqa: BLE001 - an unreadable file is exported instead
        return False
    return info["single_file"] and (info["dynamic_batch"] or not dynamic_batch)


__all__ = ["measure"]
