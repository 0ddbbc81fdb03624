"""Intake: the one place that decides whether an uploaded file is acceptable (no torch).

The API calls it on upload, the worker's inspection and loaders call it again before
reading a byte of tensor data; every refusal is one ``Rejected(code, message)``.
"""

from service.core.intake.errors import CODES, Rejected
from service.core.intake.npz import NpyMember, read_npz_members
from service.core.intake.onnx_wire import MAX_ONNX_OPSET, check_onnx_structure
from service.core.intake.safetensors import TensorInfo, read_safetensors_header
from service.core.intake.sniffing import (
    ACCEPTED_DATASETS,
    ACCEPTED_MODELS,
    MAX_DATASET_BYTES,
    Kind,
    check_dataset_file,
    check_model_file,
    sniff,
)

__all__ = [
    "ACCEPTED_DATASETS",
    "ACCEPTED_MODELS",
    "CODES",
    "MAX_DATASET_BYTES",
    "MAX_ONNX_OPSET",
    "Kind",
    "NpyMember",
    "Rejected",
    "TensorInfo",
    "check_dataset_file",
    "check_model_file",
    "check_onnx_structure",
    "read_npz_members",
    "read_safetensors_header",
    "sniff",
]
