"""Recognise an uploaded file's format from its bytes (never its name), without torch.

Cheap checks the API runs before accepting an upload; the worker's inspection does the deep
validation (ONNX conversion, safetensors offsets, dataset shapes).
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

ACCEPTED_MODELS = "ONNX (.onnx), safetensors state dict + zoo architecture, or TorchScript if enabled"
ACCEPTED_DATASETS = ".npz (x_train, y_train, x_val, y_val or x, y) or .safetensors with the same keys"


class Unacceptable(ValueError):
    """The file cannot be accepted: ``code`` is stable, the message says how to fix it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sniff(path: Path) -> str:
    """One of ``onnx``, ``safetensors``, ``npz``, ``torchscript``, ``pickle``, ``empty``, ``unknown``."""
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as stream:
        head = stream.read(16)
    if head[:1] == b"\x80" and head[1:2] in {bytes([n]) for n in range(2, 6)}:
        return "pickle"
    if head[:4] == b"PK\x03\x04":
        return _sniff_zip(path)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= min(size - 8, 100 << 20) and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        return "onnx"
    return "unknown"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    leaves = {name.rsplit("/", 1)[-1] for name in names}
    if "constants.pkl" in leaves or any("/code/" in f"/{name}" for name in names):
        return "torchscript"
    if "data.pkl" in leaves or any(name.endswith(".pkl") for name in names):
        return "pickle"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    return "unknown"


def check_model_file(path: Path, allow_torchscript: bool) -> str:
    """The model format, or ``Unacceptable`` with a reason that names the accepted formats."""
    kind = sniff(path)
    if kind in {"onnx", "safetensors"} or (kind == "torchscript" and allow_torchscript):
        return kind
    reasons = {
        "empty": ("empty-file", "The uploaded model file is empty."),
        "pickle": ("pickle-refused", "Pickled models (torch.save of a module or state dict) are "
                   "refused because loading them runs code."),
        "torchscript": ("torchscript-disabled", "TorchScript uploads are disabled on this server "
                        "(loading them runs code)."),
        "npz": ("unsupported-format", "This is a NumPy archive, not a model; upload it to /v1/datasets."),
    }  # fmt: skip
    code, message = reasons.get(kind, ("unsupported-format", "The file is not a recognised model."))
    raise Unacceptable(code, f"{message} Accepted: {ACCEPTED_MODELS}.")


def check_dataset_file(path: Path) -> str:
    """The dataset format, or ``Unacceptable``."""
    kind = sniff(path)
    if kind in {"npz", "safetensors"}:
        if kind == "safetensors":
            _check_safetensors_json(path)
        return kind
    if kind == "empty":
        raise Unacceptable("empty-file", f"The uploaded dataset is empty. Accepted: {ACCEPTED_DATASETS}.")
    if kind == "pickle":
        raise Unacceptable("pickle-refused", f"Pickled data is refused. Accepted: {ACCEPTED_DATASETS}.")
    raise Unacceptable("unsupported-format", f"The file is not a recognised dataset. Accepted: {ACCEPTED_DATASETS}.")


def _check_safetensors_json(path: Path) -> None:
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        try:
            json.loads(stream.read(length))
        except (ValueError, UnicodeDecodeError) as error:
            raise Unacceptable("invalid-safetensors", f"The safetensors header is not valid JSON ({error}).") from error
