"""CIFAR ResNets: PreAct-ResNet18 (the backdoor field's standard model) and a narrow ResNet.

PreAct-ResNet18 follows He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016,
arXiv 1603.05027) in its CIFAR form (3x3 stem, no max-pool), as used by BackdoorBench
(Wu et al., NeurIPS 2022 Datasets and Benchmarks). The narrow ResNet is the same network with a
quarter of the width and one block per stage: a CPU-sized residual model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.models.registry import Normalize, register_model


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = width
        for stage, n in enumerate(blocks):
            planes = width * 2**stage
            for i in range(n):
                layers.append(PreActBlock(in_planes, planes, stride=2 if (i == 0 and stage) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        # the blocks whose outputs defenses tap (unbackdoor.models.taps)
        self.feature_layers = tuple(f"layers.{i}" for i in range(len(layers)))
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model("preact_resnet18", "PreAct-ResNet18, CIFAR variant: the BackdoorBench standard.")
def preact_resnet18(**kw) -> nn.Module:
    return PreActResNet(blocks=(2, 2, 2, 2), width=64, **kw)


@register_model("narrow_resnet", "PreAct ResNet with one block per stage and width 16: CPU-sized.")
def narrow_resnet(width: int = 16, blocks: Sequence[int] = (1, 1, 1, 1), **kw) -> nn.Module:
    return PreActResNet(blocks=tuple(blocks), width=width, **kw)
