"""Datasets: validated uploads (``.npz`` / ``.safetensors``) and built-ins (mnist1d, digits).

Uploads hold ``x_train, y_train, x_val, y_val`` (optionally ``x_test, y_test``) or ``x, y``
that Shears splits (stratified, seeded). Features become float32 (uint8 is scaled to
[0, 1]); labels become int64 class ids ``0..C-1``. ``np.load`` runs with
``allow_pickle=False``; safetensors headers are validated before loading. Nothing is
cached between calls.
"""

from __future__ import annotations

import random
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.io.data import DataSplits
from worker.io.errors import DatasetRejected
from worker.io.safetensors_check import SafetensorsInvalid, is_safetensors_prefix, read_header

MAX_DATASET_BYTES = 4 * 1024**3
MAX_CLASSES = 100_000
BUILTINS = ("mnist1d", "digits")
_FEATURE_KINDS = "fiu"  # float, signed int, unsigned int
_SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val")
_ACCEPTED = (
    "an .npz (numpy.savez) or .safetensors file with x_train, y_train, x_val, y_val "
    "(optionally x_test, y_test) or with x, y"
)


def _is_npz(path: Path) -> bool:
    """A zip whose members are all ``.npy`` arrays (else it may be an image archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError):
        return True  # let the npz reader give its error
    return bool(names) and all(n.endswith(".npy") for n in names)


def _read_npz(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise DatasetRejected("invalid-npz", "the file is not a readable .npz archive; write it with numpy.savez.") from exc
    if total > max_bytes:
        raise DatasetRejected(
            "too-large", f"the arrays expand to {total} bytes, above the {max_bytes}-byte limit; upload fewer samples."
        )
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
    except ValueError as exc:
        raise DatasetRejected(
            "invalid-npz",
            "the .npz holds object arrays (pickled Python objects), which are refused; save plain "
            "numeric arrays with numpy.savez.",
        ) from exc
    except Exception as exc:
        raise DatasetRejected("invalid-npz", f"the .npz could not be read ({type(exc).__name__}).") from exc
    return arrays


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    try:
        read_header(path)
    except SafetensorsInvalid as exc:
        raise DatasetRejected("invalid-safetensors", f"the file is not valid safetensors: {exc}.") from exc
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise DatasetRejected("invalid-safetensors", f"the file could not be read ({type(exc).__name__}).") from exc
    arrays = {}
    for key, tensor in tensors.items():
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        arrays[key] = tensor.numpy()
    return arrays


def _features(name: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in _FEATURE_KINDS or x.dtype == np.bool_:
        raise DatasetRejected("bad-dtype", f"{name} has dtype {x.dtype}; features must be numeric (float or int).")
    if x.ndim < 2:
        raise DatasetRejected(
            "bad-shape", f"{name} has shape {list(x.shape)}; features need a sample axis and at least one feature axis."
        )
    out = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.isfinite(out).all():
        raise DatasetRejected("bad-values", f"{name} contains NaN or infinite values; clean or impute them first.")
    return out


def _labels(name: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetRejected(
            "bad-labels", f"{name} has shape {list(y.shape)}; labels must be one class id per sample (not one-hot)."
        )
    if len(y) != n:
        raise DatasetRejected("bad-shape", f"{name} has {len(y)} labels for {n} samples; they must match.")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise DatasetRejected("bad-labels", f"{name} holds non-integer values; labels must be class ids 0..C-1.")
    elif y.dtype.kind not in "iu" or y.dtype == np.bool_:
        raise DatasetRejected("bad-labels", f"{name} has dtype {y.dtype}; labels must be integer class ids.")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        raise DatasetRejected(
            "bad-labels", f"{name} holds ids outside 0..{MAX_CLASSES - 1}; labels must be class ids 0..C-1."
        )
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


def splits_from_arrays(
    arrays: dict[str, np.ndarray], *, val_fraction: float = 0.2, seed: int = 0
) -> DataSplits:
    """Validate arrays (either key layout) and build ``DataSplits``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    if all(k in arrays for k in _SPLIT_KEYS):
        parts = {k: arrays[k] for k in _SPLIT_KEYS}
        has_test = "x_test" in arrays or "y_test" in arrays
        if has_test and not ("x_test" in arrays and "y_test" in arrays):
            raise DatasetRejected("missing-keys", "x_test and y_test must come together.")
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
    else:
        raise DatasetRejected(
            "missing-keys", f"found keys {sorted(arrays)[:10]}; expected {_ACCEPTED}."
        )
    for name, x in (("x_val", x_val), ("x_test", x_test)):
        if x is not None and x.shape[1:] != x_train.shape[1:]:
            raise DatasetRejected(
                "bad-shape",
                f"{name} samples have shape {list(x.shape[1:])} but x_train samples {list(x_train.shape[1:])}.",
            )
    if len(x_train) < 2 or len(x_val) < 1:
        raise DatasetRejected(
            "too-few-samples", f"{len(x_train)} training and {len(x_val)} validation samples; need at least 2 and 1."
        )
    all_labels = [y_train, y_val] + ([y_test] if y_test is not None else [])
    num_classes = int(max(int(y.max()) for y in all_labels if y.size)) + 1
    if len(np.unique(y_train)) < 2:
        raise DatasetRejected("bad-labels", "the training labels hold a single class; classification needs two or more.")
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
    path: Path, *, val_fraction: float = 0.2, seed: int = 0, max_bytes: int = MAX_DATASET_BYTES,
    preprocessing=None, limits=None,
) -> DataSplits:
    """Load and validate an uploaded dataset (format detected by content).

    Image archives (``.zip`` / ``.tar`` of images) come back lazily decoded with
    ``preprocessing`` (a ``PreprocessingParams``; defaults when None) and ``limits`` (an
    ``ArchiveLimits``).
    """
    from service.core.image_archives import ArchiveLimits, archive_kind

    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    if archive_kind(path) == "tar" or (archive_kind(path) == "zip" and not _is_npz(path)):
        from worker.io.images import load_image_archive

        return load_image_archive(path, preprocessing, val_fraction=val_fraction, seed=seed,
                                  limits=limits or ArchiveLimits())  # fmt: skip
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        arrays = _read_npz(path, max_bytes)
    elif is_safetensors_prefix(head, size) or (len(head) == 9 and head[8:9] == b"{"):
        if size > max_bytes:
            raise DatasetRejected("too-large", f"the file has {size} bytes, above the {max_bytes}-byte limit.")
        arrays = _read_safetensors(path)
    else:
        raise DatasetRejected("unsupported-format", f"the file is neither .npz nor .safetensors; upload {_ACCEPTED}.")
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
        raise DatasetRejected("unknown-dataset", f"unknown built-in dataset {name[:40]!r}; choose one of {', '.join(BUILTINS)}.")
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
