"""Dataset uploads are validated; built-ins are generated offline with a held-out test split."""

from __future__ import annotations

import json
import os
import random
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from service.core.intake import Rejected
from worker.io.datasets import builtin_dataset, load_dataset_file


def _arrays(n_train=40, n_val=10, classes=3, shape=(1, 8), seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.standard_normal((n_train, *shape)).astype(np.float32),
        "y_train": np.arange(n_train) % classes,
        "x_val": rng.standard_normal((n_val, *shape)).astype(np.float32),
        "y_val": np.arange(n_val) % classes,
    }


def _npz(tmp_path, arrays, name="d.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _reject(path, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as err:
        load_dataset_file(path, **kwargs)
    return err.value


def test_an_npz_with_explicit_splits_loads_as_float32_features_and_int64_labels(tmp_path):
    arrays = _arrays()
    splits = load_dataset_file(_npz(tmp_path, arrays))
    assert splits.x_train.dtype == torch.float32 and splits.y_train.dtype == torch.int64
    assert splits.input_shape == (1, 8) and splits.num_classes == 3
    np.testing.assert_array_equal(splits.x_val.numpy(), arrays["x_val"])
    assert splits.x_test is None


def test_x_and_y_are_split_stratified_and_reproducibly_by_seed(tmp_path):
    rng = np.random.default_rng(1)
    path = _npz(tmp_path, {"x": rng.standard_normal((100, 5)), "y": np.repeat([0, 1, 2, 3], 25)})
    a = load_dataset_file(path, val_fraction=0.2, seed=0)
    b = load_dataset_file(path, val_fraction=0.2, seed=0)
    c = load_dataset_file(path, val_fraction=0.2, seed=1)
    assert len(a.x_train) == 80 and len(a.x_val) == 20
    assert torch.bincount(a.y_val).tolist() == [5, 5, 5, 5]
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    merged = torch.cat([a.x_train, a.x_val]).double()
    assert len({tuple(row.tolist()) for row in merged}) == 100  # a partition, no sample in both


def test_a_safetensors_dataset_loads_and_a_lying_header_is_rejected(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in _arrays().items()}, str(path))
    assert load_dataset_file(path).num_classes == 3
    header = json.dumps({"x": {"dtype": "F32", "shape": [10**6, 10**3], "data_offsets": [0, 16]}}).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    assert _reject(bad).code == "invalid-safetensors"


def test_object_arrays_in_an_npz_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    arrays = _arrays()
    arrays["x_train"] = np.array([Payload()] * 40, dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, **arrays)
    assert _reject(path).code == "pickle-refused"
    assert not marker.exists()


@pytest.mark.parametrize(
    "mutate,code",
    [
        (lambda a: a.update(y_train=a["y_train"][:-1]), "bad-shape"),
        (lambda a: a.update(x_val=a["x_val"].reshape(10, 8, 1)), "bad-shape"),
        (lambda a: a.update(x_train=a["x_train"][:, 0, 0]), "bad-shape"),
        (lambda a: a.update(y_train=-a["y_train"] - 1), "bad-labels"),
        (lambda a: a.update(y_val=a["y_val"] + 0.5), "bad-labels"),
        (lambda a: a.update(y_train=np.eye(3)[a["y_train"]]), "bad-labels"),
        (lambda a: a.update(y_train=np.zeros(40, np.int64)), "bad-labels"),
        (lambda a: a.update(x_train=np.full((40, 1, 8), "abc")), "bad-dtype"),
        (lambda a: a.update(x_train=np.full((40, 1, 8), np.nan, np.float32)), "bad-values"),
        (lambda a: a.pop("y_val"), "missing-keys"),
    ],
    ids=[
        "label-count",
        "val-sample-shape",
        "no-feature-axis",
        "negative-labels",
        "fractional-labels",
        "one-hot-labels",
        "single-class",
        "string-features",
        "nan-features",
        "missing-key",
    ],
)
def test_invalid_datasets_are_rejected_with_a_code_and_a_message(tmp_path, mutate, code):
    arrays = _arrays()
    mutate(arrays)
    err = _reject(_npz(tmp_path, arrays))
    assert err.code == code and len(str(err)) > 20


def test_files_that_are_neither_npz_nor_safetensors_are_rejected(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    assert _reject(path).code == "unsupported-format"


def test_uint8_features_are_scaled_to_the_unit_interval(tmp_path):
    arrays = _arrays()
    arrays["x_train"] = np.full((40, 1, 8), 255, np.uint8)
    arrays["x_val"] = np.zeros((10, 1, 8), np.uint8)
    splits = load_dataset_file(_npz(tmp_path, arrays))
    assert float(splits.x_train.max()) == 1.0


def test_uint8_npz_features_load_with_one_float32_copy_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2000, 1, 64, 64), dtype=np.uint8)  # 8 MiB stored, 32 MiB as float32
    path = _npz(tmp_path, {"x_train": x, "y_train": np.arange(2000) % 2, "x_val": x[:10], "y_val": np.arange(10) % 2})
    float32_bytes = x.size * 4
    tracemalloc.start()
    try:
        splits = load_dataset_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(splits.x_train.numpy(), x / np.float32(255), rtol=1e-6)
    # uint8 -> float32 -> /255 held three copies (2.25x); chunked conversion holds one (+ a chunk)
    assert peak < 1.5 * float32_bytes, (peak, float32_bytes)


def test_digits_has_a_fixed_held_out_test_split_and_seeded_train_val(tmp_path):
    a, b = builtin_dataset("digits", seed=0), builtin_dataset("digits", seed=1)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.x_val, b.x_val)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0


def test_mnist1d_is_generated_offline_without_files_or_global_rng_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np_state, py_state = np.random.get_state(), random.getstate()
    splits = builtin_dataset("mnist1d", seed=0)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or cached
    after = np.random.get_state()
    assert np.array_equal(np_state[1], after[1]) and random.getstate() == py_state
    assert splits.input_shape == (1, 40) and splits.num_classes == 10
    assert len(splits.x_train) + len(splits.x_val) == 4000 and len(splits.x_test) == 1000
    assert splits.x_train.dtype == torch.float32 and torch.isfinite(splits.x_train).all()
    assert set(splits.y_test.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["mnist1d", "digits"])
def test_the_api_knows_the_sample_shape_of_each_builtin_dataset(name):
    from service.core.intake.pairing import BUILTIN_SAMPLE_SHAPES

    assert list(builtin_dataset(name).input_shape) == BUILTIN_SAMPLE_SHAPES[name]


def test_an_unknown_builtin_dataset_is_rejected():
    with pytest.raises(Rejected) as err:
        builtin_dataset("imagenet")
    assert err.value.code == "unknown-dataset"


def test_an_npz_of_inputs_only_is_a_label_free_dataset() -> None:
    from worker.io.datasets import splits_from_arrays

    x = np.random.default_rng(0).normal(size=(20, 3, 4)).astype(np.float32)
    data = splits_from_arrays({"x": x}, val_fraction=0.25, seed=0)
    assert not data.labelled and data.num_classes == 0 and data.y_train is None
    assert (len(data.x_train), len(data.x_val)) == (15, 5)
    both = splits_from_arrays({"x_train": x[:12], "x_val": x[12:]})
    assert (len(both.x_train), len(both.x_val), both.y_val) == (12, 8, None)
