"""Image encoders h(x) whose last layer maps into the anchor (text-embedding) space.

``build_encoder(arch, dim)`` returns a ``TextAlignedEncoder``: per-channel
input normalisation, a backbone, and a new Linear head to ``dim`` outputs.
With ``dim`` = the anchor dimension (768 for SD v1.x) it is the text-aligned
encoder; with ``dim`` = the number of classes it is a plain classifier (the
OOD training job uses it that way).

- ``resnet10`` / ``resnet18`` / ``resnet34``: CIFAR-style ResNets (3x3 stem,
  stride 1, no max-pool) for 32x32-ish inputs; ``width`` scales the channels
  (64 is the standard network, small widths make CPU tests fast). resnet10
  has one block per stage: the OOD lab's fast detector.
- ``resnet152`` / ``efficientnet_v2_s``: torchvision backbones for larger
  inputs, their classifier replaced by the new head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .recipe import ENCODER_ARCHS

CIFAR_RESNET_BLOCKS = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stem conv, no max-pool; returns pooled features."""

    def __init__(self, layers: Sequence[int], width: int = 64):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, layers[0], 1)
        self.layer2 = self._stage(2 * width, layers[1], 2)
        self.layer3 = self._stage(4 * width, layers[2], 2)
        self.layer4 = self._stage(8 * width, layers[3], 2)
        self.out_features = 8 * width

    def _stage(self, planes: int, n_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n_blocks - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


def _torchvision_backbone(arch: str, pretrained: bool) -> tuple[nn.Module, int]:
    """A torchvision backbone with its classifier replaced by Identity, and its feature width."""
    from torchvision import models

    if arch == "resnet152":
        weights = models.ResNet152_Weights.IMAGENET1K_V2 if pretrained else None
        builder = models.resnet152
    else:
        weights = models.EfficientNet_V2_S_Weights.IMAGENET1K_V1 if pretrained else None
        builder = models.efficientnet_v2_s
    try:
        net = builder(weights=weights)
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(
            f"pretrained: could not load ImageNet weights for {arch} ({exc}); use pretrained=False offline"
        ) from None
    if arch == "resnet152":
        width = net.fc.in_features
        net.fc = nn.Identity()
    else:
        width = net.classifier[-1].in_features
        net.classifier = nn.Identity()
    return net, width


class TextAlignedEncoder(nn.Module):
    """normalise -> backbone -> Linear(features, dim). ``forward`` gives h(x); ``embed`` gives h/||h||."""

    mean: torch.Tensor  # buffers (1, 3, 1, 1)
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, backbone_dim: int, dim: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.backbone = backbone
        self.head = nn.Linear(backbone_dim, dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone((x - self.mean) / self.std))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x), dim=1)


def build_encoder(
    arch: str,
    dim: int,
    *,
    width: int = 64,
    pretrained: bool = False,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> TextAlignedEncoder:
    """Build an encoder by name; ``dim`` is the output size (anchor dim, or n_classes for a classifier)."""
    if arch not in ENCODER_ARCHS:
        raise ValueError(f"arch: unknown architecture {arch!r}; choose one of {', '.join(ENCODER_ARCHS)}")
    if dim < 1:
        raise ValueError(f"dim: must be positive, got {dim}")
    if width < 1:
        raise ValueError(f"width: must be positive, got {width}")
    backbone: nn.Module
    if arch in CIFAR_RESNET_BLOCKS:
        backbone = CifarResNet(CIFAR_RESNET_BLOCKS[arch], width=width)
        backbone_dim = backbone.out_features
    else:
        backbone, backbone_dim = _torchvision_backbone(arch, pretrained)
    return TextAlignedEncoder(backbone, backbone_dim, dim, mean, std)
