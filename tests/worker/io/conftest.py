"""Tiny models and ONNX files shared by the io tests (exported once per session)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(1)
logging.getLogger("torch.onnx").setLevel(logging.ERROR)
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ConvBN(nn.Module):
    """conv-BN-ReLU ×2, max-pool, view(N, -1), linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))))
        return self.fc(x.reshape(x.shape[0], -1))


class Residual(nn.Module):
    """Stem, identity block, projection block (1×1 conv shortcut), global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16)
        self.shortcut = nn.Conv2d(8, 16, 1, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.b1(self.c1(x)) + x)
        x = torch.relu(self.b2(self.c2(x)) + self.shortcut(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class Depthwise(nn.Module):
    """Conv, depthwise 3×3, pointwise 1×1, ReLU6, mean over space, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw, self.b3 = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.b1(self.c1(x)))
        x = nn.functional.relu6(self.b2(self.dw(x)))
        return self.fc(self.b3(self.pw(x)).mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


MODELS = {
    "convbn": (ConvBN, (3, 8, 8)),
    "residual": (Residual, (3, 8, 8)),
    "depthwise": (Depthwise, (3, 8, 8)),
    "mlp": (MLP, (20,)),
}


def make_model(kind: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """A model with non-trivial BatchNorm statistics (so folding errors would show)."""
    cls, shape = MODELS[kind]
    torch.manual_seed(seed)
    model = cls()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape))
    return model.eval(), shape


def export(
    model: nn.Module,
    shape: tuple[int, ...],
    path: Path,
    exporter: str,
    opset: int,
    *,
    train: bool = False,
    dynamic: bool = True,
) -> Path:
    """Export with torch's legacy (``dynamo=False``) or dynamo exporter."""
    x = torch.randn(2, *shape)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(
                model.train(train),
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}} if dynamic else None,
                training=torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL,
                do_constant_folding=not train,
            )
        else:
            torch.onnx.export(
                model.train(train),
                (x,),
                str(path),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None,
                external_data=False,
                optimize=not train,
            )
    model.eval()
    return path


EXPORTS = [("legacy", 13), ("legacy", 15), ("legacy", 17), ("dynamo", 18), ("dynamo", 21)]


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory):
    """(kind, exporter, opset) → (model, shape, path), exported lazily and once."""
    root = tmp_path_factory.mktemp("onnx")
    cache: dict[tuple, tuple[nn.Module, tuple[int, ...], Path]] = {}

    def get(kind: str, exporter: str, opset: int, train: bool = False, dynamic: bool = True):
        key = (kind, exporter, opset, train, dynamic)
        if key not in cache:
            model, shape = make_model(kind)
            path = root / f"{kind}-{exporter}-{opset}-{'train' if train else 'eval'}-{int(dynamic)}.onnx"
            cache[key] = (model, shape, export(model, shape, path, exporter, opset, train=train, dynamic=dynamic))
        return cache[key]

    return get
