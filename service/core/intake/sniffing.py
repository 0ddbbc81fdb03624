"""What an upload is, from its bytes (never its name), and whether Shears accepts it.

``sniff`` names the format; ``check_model_file`` and ``check_dataset_file`` run every check
that needs no torch (ONNX wire structure and opset, safetensors header, npz headers) and
raise ``Rejected`` with a code. The API runs them on upload, the worker again before loading.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Literal

from service.core.intake.errors import Rejected
from service.core.intake.npz import read_npz_members
from service.core.intake.onnx_wire import check_onnx_structure
from service.core.intake.safetensors import DTYPE_SIZES, looks_like_safetensors, read_safetensors_header

Kind = Literal["onnx", "safetensors", "npz", "torchscript", "pickle", "empty", "unknown", "image-zip", "image-tar"]
ACCEPTED_MODELS = "ONNX (.onnx), safetensors weights with a built-in architecture name, or TorchScript if enabled"
ACCEPTED_DATASETS = (
    "an .npz (numpy.savez) or .safetensors file with x_train, y_train, x_val, y_val "
    "(optionally x_test, y_test) or with x, y (labels optional: x alone, or x_train and x_val, for "
    "label-free jobs), or a .zip or uncompressed .tar of images (class folders or one flat folder, "
    "optionally under train/ and val/)"
)
MAX_DATASET_BYTES = 4 * 1024**3
_PICKLE_PROBE_BYTES = 1 << 16
# Opcodes a protocol 0/1 pickle can start with (protocol 2+ starts with PROTO, 0x80).
_PICKLE_START = frozenset(b"(]}cdlIJKLMNSVUXFGT\x8c\x8d\x8e\x88\x89\x95")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _looks_like_pickle(head: bytes) -> bool:
    """Any protocol: 2-5 by their PROTO opcode, 0-1 by a static opcode parse (nothing runs)."""
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5:
        return True
    if not head or head[0] not in _PICKLE_START:
        return False
    try:
        ops = 0
        for opcode, _, _ in pickletools.genops(head):
            ops += 1
            if opcode.name == "STOP":
                return ops > 1
    except Exception:  # noqa: BLE001 - not a pickle (or longer than the probe: see below)
        return False
    return False


def _zip_kind(path: Path) -> Kind:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "unknown"
    leaves = {name.rsplit("/", 1)[-1] for name in names}
    inner = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "constants.pkl" in leaves or any(name.startswith("code/") for name in inner):
        return "torchscript"
    if any(name.endswith(".pkl") for name in names):  # torch.save archives (data.pkl) and others
        return "pickle"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    return "unknown"


def sniff(path: Path) -> Kind:
    """One of ``onnx``, ``safetensors``, ``npz``, ``torchscript``, ``pickle``, ``empty``, ``unknown``."""
    path = Path(path)
    if path.stat().st_size == 0:
        return "empty"
    with path.open("rb") as stream:
        head = stream.read(_PICKLE_PROBE_BYTES)
    if head[:4] in _ZIP_MAGIC:
        return _zip_kind(path)
    if _looks_like_pickle(head):
        return "pickle"
    if looks_like_safetensors(head):
        return "safetensors"  # read_safetensors_header refuses a length beyond the file
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        return "onnx"
    return "unknown"


def _refusal(kind: Kind, what: str, accepted: str) -> Rejected:
    reasons = {
        "empty": ("empty-file", f"The uploaded {what} file is empty."),
        "pickle": (
            "pickle-refused",
            "Pickled files (torch.save of a module or state dict, pickle.dump) are "
            "refused because loading them runs code. For weights use "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors').",
        ),
        "torchscript": (
            "torchscript-disabled",
            "TorchScript uploads are disabled on this server (loading them runs code).",
        ),
        "npz": ("unsupported-format", "This is a NumPy archive, not a model; upload it to /v1/datasets."),
    }
    code, message = reasons.get(
        kind, ("unsupported-format", f"The file is not a recognised {what} (checked its content, not its name).")
    )
    return Rejected(code, f"{message} Accepted: {accepted}.")


def check_model_file(path: Path, allow_torchscript: bool) -> Kind:
    """The model's format, or ``Rejected`` with a reason that names the accepted formats."""
    kind = sniff(path)
    if kind == "onnx":
        check_onnx_structure(Path(path))
    elif kind == "safetensors":
        read_safetensors_header(Path(path))
    elif not (kind == "torchscript" and allow_torchscript):
        raise _refusal(kind, "model", ACCEPTED_MODELS)
    return kind


def check_dataset_file(path: Path, max_bytes: int = MAX_DATASET_BYTES, archive_limits=None) -> Kind:
    """The dataset's format, or ``Rejected`` (npz bombs included, from headers only).

    Image archives are checked member by member and every image decoded
    (service.core.intake.archives) within ``archive_limits`` (an ``ArchiveLimits``).
    """
    from service.core.intake import archives

    kind = sniff(path)
    archive = archives.archive_kind(Path(path)) if kind == "unknown" else None
    if archive == "zip" and not zipfile.is_zipfile(path):
        archive = None  # damaged or truncated: refused below like any unrecognised file
    if archive is not None:
        archives.check_image_archive(Path(path), archive_limits or archives.ArchiveLimits())
        return "image-zip" if archive == "zip" else "image-tar"
    if kind == "npz":
        read_npz_members(Path(path), max_bytes)
    elif kind == "safetensors":
        tensors, _ = read_safetensors_header(Path(path))
        loaded = sum(
            (8 if name.startswith("y") else 4) * (info.end - info.begin) // DTYPE_SIZES[info.dtype]
            for name, info in tensors.items()
        )
        if loaded > max_bytes:
            raise Rejected(
                "too-large",
                f"The tensors need {loaded} bytes in memory (features as float32, labels as "
                f"int64), above this server's {max_bytes}-byte dataset limit; upload fewer samples.",
            )
    else:
        raise _refusal(kind, "dataset", ACCEPTED_DATASETS)
    return kind
