"""Shapes-32: a procedurally generated CIFAR-shaped image task (32×32 RGB, 10 classes).

Issue 10's "benchmark that can tell methods apart": MNIST-1D and digits are too small
for the papers' CIFAR architectures (ResNet-20/32, VGG-11/16 [ProbMask, EB]), and CIFAR-10
cannot be downloaded nor trained on two shared CPU cores. Each class is one of five
shapes (disk, square, triangle, ring, plus) filled with one of two textures (a grating or
a checkerboard, each at a random orientation and frequency), so neither colour, position
nor a single pixel statistic tells the classes apart: the network has to combine a local
texture detector with a larger-scale shape detector, which is what convolutional features
do. Nuisances: random position, scale and rotation; random foreground and background
colours (a colour gradient); two or three clutter blobs textured like the other texture;
pixel noise. Everything is drawn from ``numpy.random.default_rng(seed)``: same seed, same
bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from worker.io.datasets import DataSplits

SIZE = 32
CLASSES = 10
SHAPES = ("disk", "square", "triangle", "ring", "plus")
TEXTURES = ("grating", "checker")
TEST_SEED = 10_000  # the test split's own stream: never overlaps a train/val seed below it


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inside-ness of shape ``kind`` in the rotated, centred coordinates (u, v) at radius r."""
    rho = np.sqrt(u**2 + v**2)
    if SHAPES[kind] == "disk":
        return rho < r
    if SHAPES[kind] == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8 * r
    if SHAPES[kind] == "triangle":  # equilateral, apex up in (u, v)
        return (v > -0.5 * r) & (np.sqrt(3.0) * u + v < r) & (-np.sqrt(3.0) * u + v < r)
    if SHAPES[kind] == "ring":
        return (rho < r) & (rho > 0.55 * r)
    arm = 0.33 * r  # plus
    return ((np.abs(u) < arm) & (np.abs(v) < r)) | ((np.abs(v) < arm) & (np.abs(u) < r))


def _placed_masks(
    kinds: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    r: np.ndarray,
    theta: np.ndarray,
) -> np.ndarray:
    """(n, 32, 32) masks: shape ``kinds[i]`` of radius ``r[i]`` centred at (cx, cy), rotated by theta."""
    n = len(kinds)
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    mask = np.zeros((n, SIZE, SIZE), dtype=bool)
    for k in range(len(SHAPES)):
        sel = kinds == k
        mask[sel] = _shape_mask(k, u[sel], v[sel], r[sel][:, None, None])
    return mask


def _texture(kind: int, x: np.ndarray, y: np.ndarray, phi: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """A texture in [0, 1]: a grating along ``phi`` or a checkerboard rotated by ``phi``."""
    a = x * np.cos(phi) + y * np.sin(phi)
    b = -x * np.sin(phi) + y * np.cos(phi)
    if TEXTURES[kind] == "grating":
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * a)
    return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * a) * np.sin(2 * np.pi * freq * b))


def generate(n: int, seed: int, noise: float = 0.08, clutter: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 3, 32, 32) float32 in about [0, 1] and balanced labels (n,) int64.

    Label ``c`` = shape ``c // 2`` with texture ``c % 2``; the labels are a shuffled
    repetition of 0..9, so every class has ⌊n/10⌋ or ⌈n/10⌉ images.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % CLASSES).astype(np.int64)
    grid = np.arange(SIZE, dtype=np.float32) - (SIZE - 1) / 2
    y, x = np.meshgrid(grid, grid, indexing="ij")  # (32, 32)
    x, y = x[None], y[None]

    def col(values: np.ndarray) -> np.ndarray:
        return values[:, None, None]

    # background: a linear colour gradient between two random colours
    grey0, grey1 = rng.uniform(0.2, 0.8, (n, 1)), rng.uniform(0.2, 0.8, (n, 1))
    c0, c1 = grey0 + rng.uniform(-0.15, 0.15, (n, 3)), grey1 + rng.uniform(-0.15, 0.15, (n, 3))
    g_phi = rng.uniform(0, 2 * np.pi, n)
    t = 0.5 + (x * np.cos(col(g_phi)) + y * np.sin(col(g_phi))) / SIZE  # (n, 32, 32) in ~[0, 1]
    images = c0[:, :, None, None] + (c1 - c0)[:, :, None, None] * t[:, None]

    def paint(mask: np.ndarray, texture: np.ndarray, colour_a: np.ndarray, colour_b: np.ndarray) -> None:
        fill = colour_a[:, :, None, None] + (colour_b - colour_a)[:, :, None, None] * texture[:, None]
        np.copyto(images, fill, where=mask[:, None])

    # clutter first (the object may cover it): small blobs with the *other* texture
    for _ in range(clutter):
        present = rng.uniform(0, 1, n) < 0.8
        kind = rng.integers(0, len(SHAPES), n)
        cx, cy = rng.uniform(-13, 13, n), rng.uniform(-13, 13, n)
        r = rng.uniform(2.0, 3.5, n)
        theta = rng.uniform(0, 2 * np.pi, n)
        mask = _placed_masks(kind, x, y, cx, cy, r, theta) & col(present)
        tex = _texture(0, x, y, col(rng.uniform(0, np.pi, n)), col(rng.uniform(0.15, 0.35, n)))
        tex_checker = _texture(1, x, y, col(rng.uniform(0, np.pi, n)), col(rng.uniform(0.1, 0.2, n)))
        other = 1 - (labels % 2)  # the texture the object does not have
        tex = np.where(col(other == 1), tex_checker, tex)
        paint(mask, tex, rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3)))

    # the object
    shape, texture = labels // 2, labels % 2
    r = rng.uniform(8.0, 13.0, n)
    cx, cy = rng.uniform(-14, 14, n) * (16 - r) / 16, rng.uniform(-14, 14, n) * (16 - r) / 16
    theta = rng.uniform(0, 2 * np.pi, n)
    mask = _placed_masks(shape, x, y, cx, cy, r, theta)
    phi = rng.uniform(0, np.pi, n)
    grating = _texture(0, x, y, col(phi), col(rng.uniform(0.12, 0.25, n)))
    checker = _texture(1, x, y, col(phi), col(rng.uniform(0.08, 0.15, n)))
    tex = np.where(col(texture == 1), checker, grating)
    fg_a = rng.uniform(0, 1, (n, 3))
    fg_b = 1.0 - fg_a + rng.uniform(-0.2, 0.2, (n, 3))  # a contrasting second colour
    paint(mask, tex, fg_a, fg_b)

    images += rng.normal(0, noise, images.shape)
    return images.astype(np.float32), labels


def shapes32(seed: int = 0, *, train: int = 3000, test: int = 2000, val_fraction: float = 0.2) -> DataSplits:
    """Train/val/test splits normalised per channel with the train split's statistics.

    The test split is fixed (its own stream, ``TEST_SEED``); ``seed`` draws the train+val
    images, so seeds differ in data as well as in initialisation.
    """
    x, y = generate(train, seed)
    x_test, y_test = generate(test, TEST_SEED)
    n_val = int(round(train * val_fraction))
    x_val, y_val, x_tr, y_tr = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    mean = x_tr.mean(axis=(0, 2, 3), keepdims=True)
    std = x_tr.std(axis=(0, 2, 3), keepdims=True)

    def norm(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray((a - mean) / std, dtype=np.float32))

    return DataSplits(
        x_train=norm(x_tr),
        y_train=torch.from_numpy(y_tr),
        x_val=norm(x_val),
        y_val=torch.from_numpy(y_val),
        num_classes=CLASSES,
        x_test=norm(x_test),
        y_test=torch.from_numpy(y_test),
    )
