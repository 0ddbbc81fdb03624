"""What the report compares before and after: accuracy, size, MACs, onnxruntime latency."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from service.core.spec import ExportParams
from worker.io.data import DataSplits
from worker.pruning.training import count_macs_params, evaluate


def measure(
    model: nn.Module, data: DataSplits, example: torch.Tensor, device: torch.device, onnx_path: Path,
    export: ExportParams,
) -> dict:  # fmt: skip
    """Validation/test accuracy (None without labels), MACs, parameters, file sizes and onnxruntime latency of
    ``model``, exported to ``onnx_path`` on the way (the model ends on the CPU)."""
    from worker.export import export_onnx, file_sizes, onnxruntime_latency

    model = model.to(device).eval()
    accuracy = evaluate(model, data.x_val, data.y_val, device=device) if data.y_val is not None else None
    test_accuracy = evaluate(model, data.x_test, data.y_test, device=device) if data.y_test is not None else None
    example = example.float() if example.dtype == torch.uint8 else example
    macs, params = count_macs_params(model, example.to(device))
    cpu_model = model.cpu()
    export_onnx(cpu_model, example, onnx_path, opset=export.opset, dynamic_batch=export.dynamic_batch)
    batch_sizes = (1, 32) if export.dynamic_batch else (1,)
    latency = onnxruntime_latency(onnx_path, tuple(data.input_shape), batch_sizes=batch_sizes)
    return {
        "accuracy": accuracy, "test_accuracy": test_accuracy, "macs": macs, "params": params,
        "file": file_sizes(onnx_path), "latency_ms": latency,
    }  # fmt: skip


__all__ = ["measure"]
