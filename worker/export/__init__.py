"""Export of pruned models (ONNX, TorchScript, masks) with numerical parity checks."""

from worker.export.artifacts import file_sizes, save_masks
from worker.export.onnx_export import (
    ExportError,
    check_onnx_parity,
    export_onnx,
    onnx_export_info,
    onnxruntime_latency,
)
from worker.export.torchscript_export import export_torchscript

__all__ = [
    "ExportError",
    "check_onnx_parity",
    "export_onnx",
    "export_torchscript",
    "file_sizes",
    "onnx_export_info",
    "onnxruntime_latency",
    "save_masks",
]
