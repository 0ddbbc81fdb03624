"""The in-memory dataset every engine stage consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataSplits:
    """Data already split. ``x_*`` are float32 inputs, ``y_*`` int64 class ids.

    ``x_test``/``y_test`` is an optional held-out split used only for final reporting
    (benchmarks); jobs report accuracy on ``val``. Label-free datasets (inputs only, the dense
    model's outputs are the targets) have ``y_* = None`` and ``num_classes = 0``. Inputs may be
    lazily decoded (worker.io.images.LazyImages): index them (``x[idx]``, ``x[a:b]``) to get
    tensors, never hold all of them.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_val: torch.Tensor
    y_val: torch.Tensor | None
    num_classes: int
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    @property
    def labelled(self) -> bool:
        """Whether there are class labels (else only the dense model's outputs can teach)."""
        return self.y_train is not None and self.y_val is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (no batch dimension)."""
        return tuple(self.x_train.shape[1:])
