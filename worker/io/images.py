"""Image-archive datasets, decoded lazily: a batch's images are read and decoded when indexed.

:class:`LazyImages` behaves like the ``(N, ...)`` input tensor the engine indexes
(``x[idx]``, ``x[a:b]``, ``len(x)``, ``x.shape``) and is also a ``torch.utils.data.Dataset``
(``x[i]`` is one sample), so a ``DataLoader`` can decode in worker processes. Nothing is
extracted: memory holds one batch, whatever the dataset's size. The archive was checked on
upload (service.core.intake.archives) and is indexed again here with the same checks. The
images of a prefix registered by reference come from object storage the same way
(``load_image_index`` with the manifest's index and a ``PrefixObjects`` source).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from service.core.intake import Rejected
from service.core.intake.archives import (
    ArchiveLimits,
    ImageIndex,
    ImageMember,
    MemberReader,
    decode_image,
    index_image_archive,
)
from service.core.spec import PreprocessingParams
from worker.io.data import DataSplits


def preprocess(image, params: PreprocessingParams) -> np.ndarray:
    """A Pillow image → the model's input array for one sample (the spec's order of steps)."""
    from PIL import Image

    image = image.convert("L" if params.color == "grayscale" else "RGB")
    if params.resize is not None:
        width, height = image.size
        if isinstance(params.resize, int):  # shorter side, aspect kept (torchvision's Resize(int))
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(params.resize * long / short)
            size = (params.resize, new_long) if width <= height else (new_long, params.resize)
        else:
            size = (params.resize[1], params.resize[0])
        image = image.resize(size, Image.BILINEAR)
    if params.center_crop is not None:
        crop_h, crop_w = (
            (params.center_crop, params.center_crop) if isinstance(params.center_crop, int) else params.center_crop
        )
        width, height = image.size
        if crop_w > width or crop_h > height:
            raise Rejected(
                "bad-preprocessing",
                f"center_crop {crop_h}x{crop_w} is larger than an image of "
                f"{height}x{width} (after resize); resize first or crop less.",
            )
        left, top = int(round((width - crop_w) / 2.0)), int(round((height - crop_h) / 2.0))
        image = image.crop((left, top, left + crop_w, top + crop_h))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if params.channel_order == "bgr":
        array = array[:, :, ::-1]
    if params.dtype == "float32":
        array = array.astype(np.float32) / 255.0
        if params.mean is not None:
            array = array - np.asarray(params.mean, dtype=np.float32)
        if params.std is not None:
            array = array / np.asarray(params.std, dtype=np.float32)
    if params.layout == "nchw":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


class MemberSource(Protocol):
    """Where member bytes come from: an archive file (``MemberReader``) or a referenced
    prefix in object storage (``service.core.storage.bucket.PrefixObjects``, which also has
    ``read_many`` to fetch a batch in parallel). Picklable: DataLoader workers open their own."""

    def read(self, member: ImageMember) -> bytes: ...

    def close(self) -> None: ...


class LazyImages(Dataset):
    """Images as a lazily decoded ``(N, ...)`` tensor (see the module docstring)."""

    def __init__(
        self, source: MemberSource, members: Sequence[ImageMember], params: PreprocessingParams, max_pixels: int
    ) -> None:
        self.source, self.members, self.params, self.max_pixels = source, list(members), params, max_pixels
        self._sample_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.members)

    def _decode(self, index: int, data: bytes | None = None) -> torch.Tensor:
        member = self.members[index]
        image = decode_image(self.source.read(member) if data is None else data, member.name, self.max_pixels)
        with image:
            sample = torch.from_numpy(preprocess(image, self.params).astype(np.float32, copy=False))
        if self._sample_shape is not None and tuple(sample.shape) != self._sample_shape:
            raise Rejected(
                "mixed-image-sizes",
                f"image {member.name[:200]!r} gives an input of shape "
                f"{list(sample.shape)} but others {list(self._sample_shape)}; declare "
                "preprocessing.resize and/or center_crop in the job spec.",
            )
        self._sample_shape = tuple(sample.shape)
        return sample

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            return self._decode(int(index) % len(self) if index < 0 else int(index))
        if isinstance(index, slice):
            positions = range(*index.indices(len(self)))
        elif isinstance(index, torch.Tensor):
            positions = index.reshape(-1).tolist()
        else:
            positions = list(index)
        if not positions:
            return torch.empty((0, *self.shape[1:]), dtype=self.dtype)
        read_many = getattr(self.source, "read_many", None)
        if read_many is None:
            return torch.stack([self._decode(int(i)) for i in positions])
        datas = read_many([self.members[int(i)] for i in positions])  # one batch of bytes in memory
        return torch.stack([self._decode(int(i), data) for i, data in zip(positions, datas, strict=True)])

    @property
    def shape(self) -> torch.Size:
        if self._sample_shape is None and self.members:
            self._decode(0)
        return torch.Size((len(self), *(self._sample_shape or ())))

    @property
    def dtype(self) -> torch.dtype:
        """Always float32 (the engine trains in float); ``dtype: uint8`` keeps 0..255 values."""
        return torch.float32

    def subset(self, positions: Sequence[int]) -> LazyImages:
        return LazyImages(self.source, [self.members[i] for i in positions], self.params, self.max_pixels)

    def close(self) -> None:
        self.source.close()


@dataclass(frozen=True)
class IndexedImages:
    """Images indexed already (a referenced prefix's manifest) and the source to read them from."""

    index: ImageIndex
    source: MemberSource
    name: str
    max_pixels: int = ArchiveLimits.max_pixels


def _split(labels: np.ndarray | None, n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
        held = max(1, int(round(n * fraction))) if n > 1 else 0
        return sorted(order[held:].tolist()), sorted(order[:held].tolist())
    keep, held = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_held = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        held += idx[:n_held].tolist()
        keep += idx[n_held:].tolist()
    return sorted(keep), sorted(held)


def load_image_archive(
    path: Path,
    params: PreprocessingParams | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    limits: ArchiveLimits | None = None,
) -> DataSplits:
    """``DataSplits`` whose inputs are :class:`LazyImages` (labels when the archive has class folders)."""
    limits = limits or ArchiveLimits()
    index = index_image_archive(path, limits)
    return load_image_index(
        index,
        MemberReader(path, index.kind),
        params,
        val_fraction=val_fraction,
        seed=seed,
        max_pixels=limits.max_pixels,
    )


def load_image_index(
    index: ImageIndex,
    source: MemberSource,
    params: PreprocessingParams | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_pixels: int = ArchiveLimits.max_pixels,
) -> DataSplits:
    """``DataSplits`` of indexed images read from ``source`` (an archive, or a referenced prefix)."""
    params = params or PreprocessingParams()
    images = LazyImages(source, index.members, params, max_pixels)
    class_ids = {name: i for i, name in enumerate(index.classes)}
    labels = np.array([class_ids[m.label] for m in index.members], dtype=np.int64) if index.labelled else None
    if index.has_split:
        train = [i for i, m in enumerate(index.members) if m.split == "train"]
        val = [i for i, m in enumerate(index.members) if m.split == "val"]
    else:
        train, val = _split(labels, len(index.members), val_fraction, seed)
    if len(train) < 2 or len(val) < 1:
        raise Rejected(
            "too-few-samples", f"{len(train)} training and {len(val)} validation images; need at least 2 and 1."
        )
    as_y = lambda ids: None if labels is None else torch.from_numpy(labels[ids])  # noqa: E731
    x_train, x_val = images.subset(train), images.subset(val)
    x_train.shape  # noqa: B018 - decodes one image: a preprocessing that cannot work fails here, at load
    return DataSplits(
        x_train=x_train,
        y_train=as_y(train),
        x_val=x_val,
        y_val=as_y(val),  # type: ignore[arg-type]
        num_classes=len(index.classes),
    )
