"""The in-memory dataset every engine stage consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataSplits:
    """Classification data already split. ``x_*`` are float32, ``y_*`` int64 class ids.

    ``x_test``/``y_test`` is an optional held-out split used only for final reporting
    (benchmarks); jobs report accuracy on ``val``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (no batch dimension)."""
        return tuple(self.x_train.shape[1:])
