"""Datasets: validated uploads (``.npz`` / ``.safetensors``) and built-ins (mnist1d, digits).

Uploads hold ``x_train, y_train, x_val, y_val`` (optionally ``x_test, y_test``) or ``x, y``
that Shears splits (stratified, seeded). Features become float32 (uint8 is scaled to
[0, 1]); labels become int64 class ids ``0..C-1``. ``service.core.intake`` checks the
file first (npz member and ``.npy`` headers, safetensors header), so no array is read
before its size is known; npz features are converted while they are decompressed, so
memory holds one float32 copy. Nothing is unpickled, nothing is cached between calls.
"""

from __future__ import annotations

import random
import sys
import types
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.core import intake
from service.core.intake import Rejected
from worker.io.data import DataSplits

MAX_DATASET_BYTES = intake.MAX_DATASET_BYTES
_CHUNK_BYTES = 4 << 20
MAX_CLASSES = 100_000
BUILTINS = ("mnist1d", "digits")
_FEATURE_KINDS = "fiu"  # float, signed int, unsigned int
_SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val")
_ACCEPTED = (
    "an .npz (numpy.savez) or .safetensors file with x_train, y_train, x_val, y_val "
    "(optionally x_test, y_test) or with x, y; without labels (x_train, x_val or x alone) for label-free jobs"
)


def is_image_archive(path: Path) -> bool:
    """A ``.zip`` that is not an ``.npz`` (members all ``.npy``), or an uncompressed ``.tar``."""
    from service.core.intake.archives import archive_kind

    kind = archive_kind(Path(path))
    if kind != "zip":
        return kind == "tar"
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # let the npz reader give its error
    return not (names and all(n.endswith(".npy") for n in names))


def _read_npz(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` whose headers ``intake`` has checked: labels as stored, features
    converted to float32 chunk by chunk while they are decompressed (one copy in memory)."""
    members = intake.read_npz_members(path, max_bytes)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for key, member in members.items():
                with archive.open(member.member) as stream:
                    stream.read(member.data_offset)
                    if key.startswith("x"):
                        arrays[key] = _stream_features(key, member, stream)
                    else:
                        raw = _read_exactly(stream, member.count * member.itemsize, key)
                        arrays[key] = np.frombuffer(raw, np.dtype(member.descr)).reshape(
                            member.shape, order="F" if member.fortran_order else "C"
                        )
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise Rejected(
            "invalid-npz", f"the .npz could not be read ({type(exc).__name__}); write it with numpy.savez."
        ) from exc
    return arrays


def _read_exactly(stream, size: int, key: str) -> bytes:
    raw = stream.read(size)
    if len(raw) != size:
        raise Rejected("invalid-npz", f"array {key!r} ends early (truncated archive?); upload the complete file.")
    return raw


def _stream_features(key: str, member: intake.NpyMember, stream) -> np.ndarray:
    """float32 features (uint8 scaled to [0, 1]) filled ``_CHUNK_BYTES`` of input at a time."""
    if member.kind not in _FEATURE_KINDS:
        raise Rejected(
            "bad-dtype", f"{key} has dtype {np.dtype(member.descr)}; features must be numeric (float or int)."
        )
    dtype = np.dtype(member.descr)
    order = "F" if member.fortran_order else "C"
    out = np.empty(member.shape, np.float32, order=order)
    flat = out.reshape(-1, order=order)  # a view: both are contiguous in ``order``
    step = max(1, _CHUNK_BYTES // dtype.itemsize)
    for start in range(0, member.count, step):
        stop = min(start + step, member.count)
        chunk = np.frombuffer(_read_exactly(stream, (stop - start) * dtype.itemsize, key), dtype)
        target = flat[start:stop]
        if dtype == np.uint8:
            np.multiply(chunk, np.float32(1 / 255), out=target, casting="unsafe")
        else:
            target[...] = chunk
        if not np.isfinite(target).all():
            raise Rejected("bad-values", f"{key} contains NaN or infinite values; clean or impute them first.")
    return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise Rejected("invalid-safetensors", f"the file could not be read ({type(exc).__name__}).") from exc
    arrays = {}
    for key, tensor in tensors.items():
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        arrays[key] = tensor.numpy()
    return arrays


def _features(name: str, x: np.ndarray) -> np.ndarray:
    """float32 features, converted at most once (uint8 scaled in place), finite-checked in chunks."""
    if x.dtype.kind not in _FEATURE_KINDS or x.dtype == np.bool_:
        raise Rejected("bad-dtype", f"{name} has dtype {x.dtype}; features must be numeric (float or int).")
    if x.ndim < 2:
        raise Rejected(
            "bad-shape", f"{name} has shape {list(x.shape)}; features need a sample axis and at least one feature axis."
        )
    out = x.astype(np.float32, copy=False)
    if x.dtype == np.uint8:
        out /= np.float32(255)
    rows = max(1, _CHUNK_BYTES // max(1, out[0].nbytes))
    for start in range(0, len(out), rows):
        if not np.isfinite(out[start : start + rows]).all():
            raise Rejected("bad-values", f"{name} contains NaN or infinite values; clean or impute them first.")
    return out


def _labels(name: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise Rejected(
            "bad-labels", f"{name} has shape {list(y.shape)}; labels must be one class id per sample (not one-hot)."
        )
    if len(y) != n:
        raise Rejected("bad-shape", f"{name} has {len(y)} labels for {n} samples; they must match.")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise Rejected("bad-labels", f"{name} holds non-integer values; labels must be class ids 0..C-1.")
    elif y.dtype.kind not in "iu" or y.dtype == np.bool_:
        raise Rejected("bad-labels", f"{name} has dtype {y.dtype}; labels must be integer class ids.")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        raise Rejected("bad-labels", f"{name} holds ids outside 0..{MAX_CLASSES - 1}; labels must be class ids 0..C-1.")
    return labels


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each class held out, seeded, local RNG."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_held = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def splits_from_arrays(arrays: dict[str, np.ndarray], *, val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Validate arrays (either key layout) and build ``DataSplits``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    if all(k in arrays for k in _SPLIT_KEYS):
        parts = {k: arrays[k] for k in _SPLIT_KEYS}
        has_test = "x_test" in arrays or "y_test" in arrays
        if has_test and not ("x_test" in arrays and "y_test" in arrays):
            raise Rejected("missing-keys", "x_test and y_test must come together.")
        x_train = _features("x_train", parts["x_train"])
        y_train = _labels("y_train", parts["y_train"], len(x_train))
        x_val = _features("x_val", parts["x_val"])
        y_val = _labels("y_val", parts["y_val"], len(x_val))
        x_test = _features("x_test", arrays["x_test"]) if has_test else None
        y_test = _labels("y_test", arrays["y_test"], len(x_test)) if x_test is not None else None
    elif "x" in arrays and "y" in arrays:
        x = _features("x", arrays["x"])
        y = _labels("y", arrays["y"], len(x))
        train_idx, val_idx = _stratified_split(y, val_fraction, seed)
        x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
        x_test = y_test = None
    elif not any(k.startswith("y") for k in arrays) and ("x" in arrays or {"x_train", "x_val"} <= set(arrays)):
        # inputs only: a label-free dataset (the dense model's outputs are the targets)
        if "x" in arrays:
            x = _features("x", arrays["x"])
            order = np.random.default_rng(seed).permutation(len(x))
            held = max(1, int(round(len(x) * val_fraction))) if len(x) > 1 else 0
            x_train, x_val = x[np.sort(order[held:])], x[np.sort(order[:held])]
        else:
            x_train, x_val = _features("x_train", arrays["x_train"]), _features("x_val", arrays["x_val"])
        x_test = _features("x_test", arrays["x_test"]) if "x_test" in arrays else None
        y_train = y_val = y_test = None
    else:
        raise Rejected("missing-keys", f"found keys {sorted(arrays)[:10]}; expected {_ACCEPTED}.")
    for name, x in (("x_val", x_val), ("x_test", x_test)):
        if x is not None and x.shape[1:] != x_train.shape[1:]:
            raise Rejected(
                "bad-shape",
                f"{name} samples have shape {list(x.shape[1:])} but x_train samples {list(x_train.shape[1:])}.",
            )
    if len(x_train) < 2 or len(x_val) < 1:
        raise Rejected(
            "too-few-samples", f"{len(x_train)} training and {len(x_val)} validation samples; need at least 2 and 1."
        )
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    if y_train is None:
        return DataSplits(
            x_train=as_x(x_train),
            y_train=None,
            x_val=as_x(x_val),
            y_val=None,
            num_classes=0,
            x_test=None if x_test is None else as_x(x_test),
        )
    all_labels = [y_train, y_val] + ([y_test] if y_test is not None else [])
    num_classes = int(max(int(y.max()) for y in all_labels if y.size)) + 1
    if len(np.unique(y_train)) < 2:
        raise Rejected("bad-labels", "the training labels hold a single class; classification needs two or more.")
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return DataSplits(
        x_train=as_x(x_train),
        y_train=torch.from_numpy(y_train),
        x_val=as_x(x_val),
        y_val=torch.from_numpy(y_val),
        num_classes=num_classes,
        x_test=None if x_test is None else as_x(x_test),
        y_test=None if y_test is None else torch.from_numpy(y_test),
    )


def load_dataset_file(
    path: Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_bytes: int = MAX_DATASET_BYTES,
    preprocessing=None,
    limits=None,
) -> DataSplits:
    """Load and validate an uploaded dataset (format and bombs checked by ``intake`` first).

    Image archives (``.zip`` / ``.tar`` of images) come back lazily decoded with
    ``preprocessing`` (a ``PreprocessingParams``; defaults when None) and ``limits`` (an
    ``ArchiveLimits``): their members are checked when indexed, each image when decoded.
    """
    path = Path(path)
    if is_image_archive(path):
        from service.core.intake.archives import ArchiveLimits
        from worker.io.images import load_image_archive

        return load_image_archive(
            path, preprocessing, val_fraction=val_fraction, seed=seed, limits=limits or ArchiveLimits()
        )
    kind = intake.check_dataset_file(path, max_bytes)
    arrays = _read_npz(path, max_bytes) if kind == "npz" else _read_safetensors(path)
    return splits_from_arrays(arrays, val_fraction=val_fraction, seed=seed)


# ------------------------------------------------------------------------------------
# Built-ins
# ------------------------------------------------------------------------------------


def _import_mnist1d_data() -> Any:
    """Import ``mnist1d.data``; its downloader's ``requests`` import is stubbed if missing."""
    try:
        import mnist1d.data as data

        return data
    except ModuleNotFoundError as exc:
        if exc.name != "requests":
            raise
    stub = types.ModuleType("requests")
    sys.modules["requests"] = stub
    try:
        import mnist1d.data as data
    finally:
        if sys.modules.get("requests") is stub:
            del sys.modules["requests"]
    return data


def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reference MNIST-1D (package defaults: 5000 samples, seed 42), generated offline.

    ``make_dataset`` seeds Python's and numpy's global generators; their states are
    restored afterwards so callers see no side effect.
    """
    data = _import_mnist1d_data()
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        generated = data.make_dataset(data.get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return generated["x"], generated["y"], generated["x_test"], generated["y_test"]


def builtin_dataset(name: str, seed: int = 0, *, val_fraction: float = 0.2) -> DataSplits:
    """``mnist1d`` (N, 1, 40) or ``digits`` (N, 1, 8, 8) with train/val/test splits.

    The test split is fixed (mnist1d's own; 20% of digits with a constant seed) and is
    never part of train or val; ``seed`` only changes the train/val split.
    """
    if name == "mnist1d":
        x, y, x_test, y_test = _mnist1d_arrays()
        x = x.astype(np.float32)[:, None, :]
        x_test = x_test.astype(np.float32)[:, None, :]
    elif name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        features = (digits.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        labels = digits.target.astype(np.int64)
        rest, test = _stratified_split(labels, 0.2, seed=12345)
        x, y, x_test, y_test = features[rest], labels[rest], features[test], labels[test]
    else:
        raise Rejected(
            "unknown-dataset", f"unknown built-in dataset {name[:40]!r}; choose one of {', '.join(BUILTINS)}."
        )
    y = y.astype(np.int64)
    train_idx, val_idx = _stratified_split(y, val_fraction, seed)
    return DataSplits(
        x_train=torch.from_numpy(np.ascontiguousarray(x[train_idx])),
        y_train=torch.from_numpy(y[train_idx]),
        x_val=torch.from_numpy(np.ascontiguousarray(x[val_idx])),
        y_val=torch.from_numpy(y[val_idx]),
        num_classes=int(max(y.max(), y_test.max())) + 1,
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test.astype(np.int64)),
    )
