"""RepVGG (Ding et al., CVPR 2021) in its training form, sized for 28x28 Fashion-MNIST.

Each block sums a 3x3 conv+BN, a 1x1 conv+BN and (when shapes allow) a BN identity branch, then
applies ReLU; `repvgg` + `bn_fold` turn every block into one 3x3 conv. The A0 layout (stage
depths 1-2-4-14-1) is kept; widths (8-16-32-64-128) are scaled down for 28x28 inputs and
minutes of CPU training.
"""

from __future__ import annotations

import torch
import torch.nn as nn

A0_DEPTHS = (1, 2, 4, 14, 1)


def conv_bn(cin: int, cout: int, kernel: int, stride: int, padding: int,
            groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class RepVGGBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.dense = conv_bn(cin, cout, 3, stride, 1, groups)
        self.pointwise = conv_bn(cin, cout, 1, stride, 0, groups)
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)


class ACBlock(nn.Module):
    """ACNet's asymmetric block: 3x3 + 1x3 + 3x1 branches, each with its BatchNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.square = conv_bn(channels, channels, 3, 1, 1)
        self.hor = nn.Sequential(nn.Conv2d(channels, channels, (1, 3), 1, (0, 1), bias=False),
                                 nn.BatchNorm2d(channels))
        self.ver = nn.Sequential(nn.Conv2d(channels, channels, (3, 1), 1, (1, 0), bias=False),
                                 nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.square(x) + self.hor(x) + self.ver(x))


class RepVGG(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64, 128),
                 depths: tuple[int, ...] = A0_DEPTHS, in_channels: int = 1, classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for i in range(depth):
                stride = 2 if i == 0 and stage > 0 else 1
                layers.append(RepVGGBlock(cin, width, stride))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean(dim=(2, 3)))


def randomize_batch_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Untrained BatchNorms are identities; random statistics make exactness tests real."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    return model.eval()
