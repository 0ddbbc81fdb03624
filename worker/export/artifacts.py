"""Small artifact helpers: unstructured masks as safetensors, file sizes."""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_masks(masks: dict[str, torch.Tensor], path: Path) -> Path:
    """Save binary weight masks (name → tensor) as a safetensors file of ``bool`` tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: (mask.detach().cpu() != 0).contiguous() for name, mask in masks.items()}
    save_file(tensors, str(path), metadata={"format": "shears-masks", "dtype": "bool"})
    return path


def file_sizes(path: Path, *, level: int = 6, chunk: int = 1 << 20) -> dict[str, int]:
    """Size on disk and gzip-compressed size (streamed; DEFLATE level ``level``) in bytes."""
    path = Path(path)
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip container
    compressed = 0
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            compressed += len(compressor.compress(block))
    compressed += len(compressor.flush())
    return {"bytes": path.stat().st_size, "gzip_bytes": compressed}
