"""Image-archive datasets: lazily decoded, preprocessed as the spec declares, labelled or not."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.core.intake import Rejected
from service.core.spec import PreprocessingParams
from tests.images import flat_folder, image_folder, png_bytes, tar_bytes, zip_bytes
from worker.io.datasets import load_dataset_file
from worker.io.images import preprocess


def _write(tmp_path: Path, data: bytes, name: str = "data.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_an_image_folder_zip_loads_as_labelled_splits_of_lazily_decoded_tensors(tmp_path):
    path = _write(tmp_path, zip_bytes(image_folder(classes=3, per_class=10, size=12)))
    data = load_dataset_file(path, val_fraction=0.2, seed=0)
    assert data.labelled and data.num_classes == 3
    assert len(data.x_train) == 24 and len(data.x_val) == 6
    assert sorted(data.y_val.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified
    assert data.input_shape == (3, 12, 12)
    batch = data.x_train[torch.tensor([0, 5, 23])]
    assert batch.shape == (3, 3, 12, 12) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    # labels follow the class folder: class c has its channel c saturated
    for x, y in zip(data.x_train[0:24], data.y_train, strict=True):
        assert float(x[int(y)].min()) == 1.0


def test_a_flat_tar_loads_without_labels_and_an_explicit_split_is_used(tmp_path):
    data = load_dataset_file(_write(tmp_path, tar_bytes(flat_folder(10)), "flat.tar"), val_fraction=0.3)
    assert not data.labelled and data.y_train is None and data.num_classes == 0
    assert (len(data.x_train), len(data.x_val)) == (7, 3)
    split = load_dataset_file(_write(tmp_path, zip_bytes(image_folder(per_class=5, split=True))))
    assert (len(split.x_train), len(split.x_val)) == (6, 4)


def test_preprocessing_resizes_crops_normalises_and_reorders_like_torchvision():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8))
    params = PreprocessingParams(resize=10, center_crop=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    out = preprocess(image, params)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    resized = np.asarray(image.resize((20, 10), Image.BILINEAR), dtype=np.float32)[1:9, 6:14] / 255.0
    np.testing.assert_allclose(out, ((resized - 0.5) / 0.25).transpose(2, 0, 1), atol=1e-6)
    bgr = preprocess(image, PreprocessingParams(channel_order="bgr", layout="nhwc", dtype="uint8"))
    assert bgr.shape == (20, 40, 3) and bgr.dtype == np.uint8
    np.testing.assert_array_equal(bgr[..., 0], np.asarray(image)[..., 2])
    gray = preprocess(image, PreprocessingParams(color="grayscale", resize=(5, 6)))
    assert gray.shape == (1, 5, 6)


def test_images_of_mixed_sizes_without_a_resize_are_explained(tmp_path):
    members = [("images/a.png", png_bytes(8, 8)), ("images/b.png", png_bytes(9, 8)), ("images/c.png", png_bytes(8, 8))]
    data = load_dataset_file(_write(tmp_path, zip_bytes(members)), val_fraction=0.34)
    with pytest.raises(Rejected, match="preprocessing.resize"):
        data.x_train[0 : len(data.x_train)]
        data.x_val[0:1]
    fixed = load_dataset_file(_write(tmp_path, zip_bytes(members)), preprocessing=PreprocessingParams(resize=(8, 8)))
    assert fixed.x_train[0:2].shape == (2, 3, 8, 8)


def test_memory_while_iterating_does_not_grow_with_the_dataset(tmp_path):
    """Iterating a 4x larger set in batches peaks at about the same traced memory."""
    peaks = []
    for count in (40, 160):
        data = load_dataset_file(
            _write(tmp_path, zip_bytes(flat_folder(count, size=64)), f"d{count}.zip"), val_fraction=0.1
        )
        tracemalloc.start()
        for i in range(0, len(data.x_train), 8):
            data.x_train[i : i + 8]
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    full_batch_bytes = 144 * 3 * 64 * 64 * 4  # what holding the larger train split would cost
    assert peaks[1] < 2 * peaks[0] and peaks[1] < full_batch_bytes / 4
