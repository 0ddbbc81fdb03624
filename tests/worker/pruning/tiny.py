"""Tiny models and data for the pruning-engine tests (CPU, milliseconds each)."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from worker.io.data import DataSplits


class ConvBN1d(nn.Module):
    """Two conv+BN+ReLU blocks on 1-D signals, global average pool, linear classifier."""

    def __init__(self, channels: int = 8, classes: int = 3, length: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels * 2, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(channels * 2)
        self.fc = nn.Linear(channels * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=2))


class ConvBN2d(nn.Module):
    """Two conv+BN+ReLU blocks on 8x8 images, flatten of a 2x2 pool, linear classifier."""

    def __init__(self, channels: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, 8, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyResNet(nn.Module):
    """Stem + one residual block (add) + a downsampling block with a 1x1 shortcut."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.a1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.a1_bn = nn.BatchNorm2d(8)
        self.a2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.a2_bn = nn.BatchNorm2d(8)
        self.b1 = nn.Conv2d(8, 12, 3, padding=1, stride=2, bias=False)
        self.b1_bn = nn.BatchNorm2d(12)
        self.b2 = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.b2_bn = nn.BatchNorm2d(12)
        self.short = nn.Conv2d(8, 12, 1, stride=2, bias=False)
        self.short_bn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(x + self.a2_bn(self.a2(torch.relu(self.a1_bn(self.a1(x))))))
        y = self.b2_bn(self.b2(torch.relu(self.b1_bn(self.b1(x)))))
        x = torch.relu(y + self.short_bn(self.short(x)))
        return self.fc(x.mean(dim=(2, 3)))


class DepthwiseSeparable(nn.Module):
    """Conv stem, depthwise 3x3 + pointwise 1x1 block, linear classifier."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw_bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.pw_bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.dw_bn(self.dw(x)))
        x = torch.relu(self.pw_bn(self.pw(x)))
        return self.fc(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear, no BatchNorm."""

    def __init__(self, inputs: int = 16, hidden: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def make_data(
    shape: tuple[int, ...] = (1, 16), n_train: int = 192, n_val: int = 64, classes: int = 3, seed: int = 0
) -> DataSplits:
    """Learnable synthetic classification: class means plus noise."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn((classes, *shape), generator=gen) * 1.5

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(classes, (n,), generator=gen)
        x = means[y] + torch.randn((n, *shape), generator=gen)
        return x.float(), y.long()

    x_train, y_train = split(n_train)
    x_val, y_val = split(n_val)
    return DataSplits(x_train, y_train, x_val, y_val, num_classes=classes)


def stub_torchvision() -> None:
    """Import onnx2torch the way the engine does: against a torchvision stub that is removed
    right after the import (a stub left in ``sys.modules`` breaks torch's dynamo exporter)."""
    import worker.io.onnx  # noqa: F401


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """Export with the TorchScript exporter (opset 17, dynamic batch) to bytes."""
    buf = io.BytesIO()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return buf.getvalue()


def to_graph_module(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The onnx2torch ``GraphModule`` of ``model`` (BN folded into convs by the exporter)."""
    stub_torchvision()
    import onnx
    import onnx2torch

    return onnx2torch.convert(onnx.load_from_string(onnx_bytes(model, example)))


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN distinct statistics and affine parameters, like a trained model.

    (Fresh BNs fold to identical zero biases, which the ONNX exporter deduplicates into
    ``Identity`` nodes that onnx2torch cannot take as a Conv bias.)
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return model
