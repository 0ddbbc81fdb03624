"""bench/shapes32.py: the procedural CIFAR-shaped image task of the method benchmark."""

from __future__ import annotations

import numpy as np
import torch

from bench.shapes32 import CLASSES, generate, shapes32


def test_the_same_seed_draws_the_same_images_and_another_seed_does_not():
    x0, y0 = generate(40, seed=3)
    x1, y1 = generate(40, seed=3)
    x2, _ = generate(40, seed=4)
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert not np.allclose(x0, x2)


def test_images_are_32_by_32_rgb_float32_and_every_class_is_equally_frequent():
    x, y = generate(100, seed=0)
    assert x.shape == (100, 3, 32, 32) and x.dtype == np.float32
    assert y.dtype == np.int64
    assert np.bincount(y, minlength=CLASSES).tolist() == [10] * CLASSES


def test_the_splits_share_one_fixed_test_set_and_are_normalised_by_the_train_split():
    a, b = shapes32(0, train=100, test=30), shapes32(1, train=100, test=30)
    assert a.x_train.shape == (80, 3, 32, 32) and a.x_val.shape == (20, 3, 32, 32)
    assert a.num_classes == CLASSES
    assert not torch.equal(a.x_train, b.x_train)
    # the test images are the same draw; only the train statistics used to normalise them differ
    assert torch.equal(a.y_test, b.y_test)
    mean = a.x_train.mean(dim=(0, 2, 3))
    std = a.x_train.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(std, torch.ones(3), atol=1e-2)


def test_a_class_is_not_given_away_by_its_mean_colour():
    x, y = generate(1000, seed=0)
    per_class = np.stack([x[y == c].mean(axis=(0, 2, 3)) for c in range(CLASSES)])  # (10, 3)
    assert np.ptp(per_class, axis=0).max() < 0.05
