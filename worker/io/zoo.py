"""Built-in architectures of the papers, as plain ``nn.Module``s, plus safetensors loading.

CIFAR-style networks (32×32 input): VGG-16/19 with BatchNorm (network-slimming layout:
no fifth max-pool, 2×2 average pool, one linear layer), ResNet-20/32/56 (He et al.,
three stages of 16/32/64 channels, 1×1-conv+BN shortcuts where shape changes, which
Torch-Pruning handles), PreResNet-20/32/56 (pre-activation blocks), MobileNetV2 (CIFAR
strides), and the MNIST-1D reference CNN (input ``(N, 1, 40)``).

Every builder takes ``num_classes``, ``in_channels`` and ``width`` (channel multiplier).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from service.core.intake import Rejected, read_safetensors_header


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


# ----------------------------------------------------------------------------- VGG


_VGG_CFG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm: conv3×3-BN-ReLU stacks, 2×2 average pool, linear head."""

    def __init__(self, depth: int = 16, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG_CFG[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = _scaled(int(item), width)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    """VGG-16 with BatchNorm for 32×32 inputs."""
    return VGG(16, num_classes, in_channels, width)


def vgg19_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    """VGG-19 with BatchNorm for 32×32 inputs."""
    return VGG(19, num_classes, in_channels, width)


# ----------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Post-activation basic block; a 1×1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv); 1×1 conv shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.relu(self.bn2(self.conv1(out))))
        return out + residual


class CifarResNet(nn.Module):
    """ResNet/PreResNet for CIFAR: depth 6n+2, stages of 16/32/64 (× width) channels."""

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, preact: bool = False
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2 (20, 32, 56, ...)")
        blocks = (depth - 2) // 6
        block = PreActBlock if preact else BasicBlock
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        layers = []
        in_planes = widths[0]
        for stage, planes in enumerate(widths):
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for index in range(blocks):
                stage_blocks.append(block(in_planes, planes, stride if index == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = layers
        # stem BN for post-activation networks; final BN-ReLU for pre-activation ones
        self.bn1 = nn.BatchNorm2d(in_planes if preact else widths[0])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = self.relu(self.bn1(out))
        out = self.layer3(self.layer2(self.layer1(out)))
        if self.preact:
            out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-20 for CIFAR."""
    return CifarResNet(20, num_classes, in_channels, width)


def resnet32(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-32 for CIFAR."""
    return CifarResNet(32, num_classes, in_channels, width)


def resnet56(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-56 for CIFAR."""
    return CifarResNet(56, num_classes, in_channels, width)


def preresnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """Pre-activation ResNet-20 for CIFAR."""
    return CifarResNet(20, num_classes, in_channels, width, preact=True)


def preresnet32(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """Pre-activation ResNet-32 for CIFAR."""
    return CifarResNet(32, num_classes, in_channels, width, preact=True)


def preresnet56(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """Pre-activation ResNet-56 for CIFAR."""
    return CifarResNet(56, num_classes, in_channels, width, preact=True)


# ----------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand, 3×3 depthwise, 1×1 project; residual when shapes match."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


_MOBILENET_CFG = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32×32 inputs (stride-1 stem and second stage)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        stem = _scaled(32, width)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU6(inplace=True),
        ]
        channels = stem
        for expansion, out, repeats, stride in _MOBILENET_CFG:
            out = _scaled(out, width)
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out, expansion, stride if index == 0 else 1))
                channels = out
        last = _scaled(1280, max(width, 1.0))
        layers += [nn.Conv2d(channels, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> MobileNetV2:
    """MobileNetV2 (CIFAR variant)."""
    return MobileNetV2(num_classes, in_channels, width)


# ----------------------------------------------------------------------------- MNIST-1D


class Mnist1dCNN(nn.Module):
    """The MNIST-1D reference CNN (``ConvBase``): three Conv1d (k5/s2, k3/s2, k3/s2, pad 1),
    ReLU, flatten, one linear layer; 25 channels; optional BatchNorm after each conv.

    Accepts ``(N, 40)`` or ``(N, 1, 40)``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: float = 1.0,
        length: int = 40,
        channels: int = 25,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        c = _scaled(channels, width)
        specs = [(in_channels, c, 5), (c, c, 3), (c, c, 3)]
        layers: list[nn.Module] = []
        out_len = length
        for cin, cout, k in specs:
            layers.append(nn.Conv1d(cin, cout, k, stride=2, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(cout))
            layers.append(nn.ReLU(inplace=True))
            out_len = (out_len + 2 - k) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(c * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.linear(torch.flatten(self.features(x), 1))


def mnist1d_cnn(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, batchnorm: bool = True) -> Mnist1dCNN:
    """The MNIST-1D reference CNN (with BatchNorm unless ``batchnorm=False``)."""
    return Mnist1dCNN(num_classes, in_channels, width, batchnorm=batchnorm)


# ----------------------------------------------------------------------------- registry

ZOO: dict[str, Callable[..., nn.Module]] = {
    "vgg16_bn": vgg16_bn,
    "vgg19_bn": vgg19_bn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "preresnet20": preresnet20,
    "preresnet32": preresnet32,
    "preresnet56": preresnet56,
    "mobilenet_v2": mobilenet_v2,
    "mnist1d_cnn": mnist1d_cnn,
}

DEFAULT_IN_CHANNELS = {name: (1 if name == "mnist1d_cnn" else 3) for name in ZOO}


def nominal_input_shape(name: str, in_channels: int | None = None) -> tuple[int, ...]:
    """Per-sample input shape (no batch dimension) the architecture is built for."""
    channels = DEFAULT_IN_CHANNELS[name] if in_channels is None else in_channels
    return (channels, 40) if name == "mnist1d_cnn" else (channels, 32, 32)


def _unknown(name: str) -> Rejected:
    return Rejected(
        "unknown-architecture", f"unknown architecture {name[:60]!r}; choose one of: {', '.join(sorted(ZOO))}."
    )


def build(name: str, num_classes: int = 10, in_channels: int | None = None, width: float = 1.0, **kwargs) -> nn.Module:
    """Build a zoo architecture by name (``in_channels`` defaults to its nominal value)."""
    if name not in ZOO:
        raise _unknown(name)
    if not (0 < width <= 8):
        raise ValueError("width must be in (0, 8]")
    channels = DEFAULT_IN_CHANNELS[name] if in_channels is None else in_channels
    return ZOO[name](num_classes=num_classes, in_channels=channels, width=width, **kwargs)


def _head_and_stem(module: nn.Module) -> tuple[str | None, str | None]:
    """State-dict keys of the first conv weight and last linear weight."""
    stem = head = None
    for name, sub in module.named_modules():
        if stem is None and isinstance(sub, (nn.Conv1d, nn.Conv2d)):
            stem = f"{name}.weight"
        if isinstance(sub, nn.Linear):
            head = f"{name}.weight"
    return stem, head


def load_zoo_model(name: str, safetensors_path: Path, **kwargs) -> nn.Module:
    """Build ``name`` and load a safetensors state dict into it, strictly.

    ``num_classes`` and ``in_channels`` default to what the file's classifier and stem
    weights say. Missing or unexpected keys, or any shape mismatch, raise
    ``Rejected("weights-mismatch")``; a malformed file ``"invalid-safetensors"``.
    Only ``num_batches_tracked`` counters may be absent.
    """
    from safetensors.torch import load_file

    if name not in ZOO:
        raise _unknown(name)
    header, _ = read_safetensors_header(Path(safetensors_path))
    probe = build(name, **{k: v for k, v in kwargs.items() if k != "num_classes"})
    stem, head = _head_and_stem(probe)
    if kwargs.get("num_classes") is None and head in header and len(header[head].shape) == 2:
        kwargs["num_classes"] = header[head].shape[0]
    if kwargs.get("in_channels") is None and stem in header and len(header[stem].shape) >= 3:
        kwargs["in_channels"] = header[stem].shape[1]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = build(name, **kwargs)
    expected = model.state_dict()
    missing = [k for k in expected if k not in header and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in header if k not in expected]
    wrong = [
        f"{k} {list(header[k].shape)} (expected {list(expected[k].shape)})"
        for k in expected
        if k in header and tuple(expected[k].shape) != header[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(k[:80] for k in unexpected[:3])})")
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        raise Rejected(
            "weights-mismatch",
            f"the weights do not fit architecture {name!r}: {'; '.join(parts)}. Save "
            f"model.state_dict() of the same architecture with safetensors.torch.save_file, "
            "or pick the architecture (and width) the weights were trained with.",
        )
    try:
        state = load_file(str(safetensors_path))
    except Exception as exc:
        raise Rejected("invalid-safetensors", f"the weights file could not be read ({type(exc).__name__}).") from exc
    for key, tensor in state.items():
        if expected[key].is_floating_point() != tensor.is_floating_point():
            raise Rejected(
                "weights-mismatch",
                f"tensor {key!r} has dtype {tensor.dtype}; the architecture needs {expected[key].dtype}.",
            )
    model.load_state_dict(state, strict=False)
    return model
