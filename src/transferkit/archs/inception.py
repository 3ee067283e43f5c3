"""Inception modules, naive and with 1x1 reductions, and GoogLeNet-style networks (Szegedy et al. 2014).

Read top to bottom: a convolution unit, the two modules, the network, the
registered factories.

The *naive* module runs a 1x1, a 3x3 and a 5x5 convolution and a 3x3 max-pool
side by side on the same input and concatenates the four outputs along the
channels.  The pooling branch keeps all input channels, so every module widens
the network, and the 3x3/5x5 convolutions see all input channels: expensive.
The *reduced* module (the one GoogLeNet uses) puts 1x1 convolutions before the
3x3 and the 5x5 ("#3x3 reduce", "#5x5 reduce") and after the pooling ("pool
proj"), which cuts parameters and multiply-accumulates several times (see
BENCHMARKS.md).

Every convolution is conv -> batch norm -> ReLU (batch norm makes the network
trainable from scratch without GoogLeNet's auxiliary classifiers; the paper's
LRN layers are left out).

Registered networks:

* ``googlenet``: the 9 modules of the paper's table 1 after the ImageNet stem;
* ``inception_small`` / ``inception_small_naive``: a small stem (3x3 convs at
  stride 1) and modules 3a, 3b, 4a, 4b, for 28x28 to 64x64 inputs; the same
  channel sizes (scaled by ``width / 64``) in the reduced and the naive form.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from transferkit.core.registry import register_arch


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> batch norm -> ReLU, 'same' padding for odd kernels."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


# --------------------------------------------------------------------------- modules


class InceptionNaive(nn.Module):
    """Naive Inception module: parallel 1x1, 3x3, 5x5 convolutions and 3x3 max-pooling, concatenated.

    Args:
        in_ch: input channels.
        c1, c3, c5: output channels of the 1x1, 3x3 and 5x5 branches.

    Shapes: (N, in_ch, H, W) -> (N, c1 + c3 + c5 + in_ch, H, W) (the pooling branch keeps in_ch channels).
    """

    def __init__(self, in_ch: int, c1: int, c3: int, c5: int):
        super().__init__()
        self.branch1 = ConvBNReLU(in_ch, c1, 1)
        self.branch3 = ConvBNReLU(in_ch, c3, 3)
        self.branch5 = ConvBNReLU(in_ch, c5, 5)
        self.branch_pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.out_channels = c1 + c3 + c5 + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class InceptionReduced(nn.Module):
    """Inception module with dimension reductions (GoogLeNet's).

    Args:
        in_ch: input channels.
        c1: 1x1 branch outputs.
        c3r, c3: 1x1 reduction, then 3x3 outputs.
        c5r, c5: 1x1 reduction, then 5x5 outputs.
        pool_proj: 1x1 projection after the 3x3 max-pool.

    Shapes: (N, in_ch, H, W) -> (N, c1 + c3 + c5 + pool_proj, H, W).
    """

    def __init__(self, in_ch: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int):
        super().__init__()
        self.branch1 = ConvBNReLU(in_ch, c1, 1)
        self.branch3 = nn.Sequential(ConvBNReLU(in_ch, c3r, 1), ConvBNReLU(c3r, c3, 3))
        self.branch5 = nn.Sequential(ConvBNReLU(in_ch, c5r, 1), ConvBNReLU(c5r, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBNReLU(in_ch, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


# GoogLeNet, table 1: name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj ("pool": 3x3/2 max-pool).
# The input channels follow from the previous module, so the naive form can be built from the same rows.
GOOGLENET: tuple = (
    ("3a", 64, 96, 128, 16, 32, 32),
    ("3b", 128, 128, 192, 32, 96, 64),
    "pool",
    ("4a", 192, 96, 208, 16, 48, 64),
    ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128),
    "pool",
    ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
)
SMALL: tuple = GOOGLENET[:5]  # 3a, 3b, pool, 4a, 4b


def inception_module(in_ch: int, row: Sequence[int], naive: bool) -> nn.Module:
    """One module from a table row (c1, c3r, c3, c5r, c5, pool_proj); the naive form ignores the reductions."""
    c1, c3r, c3, c5r, c5, pp = row
    if naive:
        return InceptionNaive(in_ch, c1, c3, c5)
    return InceptionReduced(in_ch, c1, c3r, c3, c5r, c5, pp)


# --------------------------------------------------------------------------- the network


class InceptionNet(nn.Module):
    """Stem, Inception modules (with 3x3/2 max-pools between groups), global pooling, dropout, classifier.

    Args:
        spec: rows of :data:`GOOGLENET` (and ``"pool"``).
        width: stem width; every channel count of the table is scaled by ``width / 64``.
        naive: naive modules (no reductions) instead of reduced ones.
        stem: ``imagenet`` (7x7/2 conv, pool, 1x1, 3x3, pool: H/8) or ``small`` (two 3x3 convs, stride 1).
        num_classes: 0 returns the pooled features ``(N, num_features)``.
        dropout: before the classifier (GoogLeNet: 0.4).

    Shapes: (N, in_chans, H, W) -> (N, num_classes).
    """

    def __init__(
        self,
        spec: Sequence = GOOGLENET,
        width: int = 64,
        naive: bool = False,
        stem: Literal["imagenet", "small"] = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.4,
    ):
        super().__init__()

        def s(c: int) -> int:
            return max(1, round(c * width / 64))

        stem_out = s(192)
        if stem == "imagenet":
            self.stem = nn.Sequential(
                ConvBNReLU(in_chans, s(64), 7, stride=2),
                nn.MaxPool2d(3, stride=2, padding=1),
                ConvBNReLU(s(64), s(64), 1),
                ConvBNReLU(s(64), stem_out, 3),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif stem == "small":
            self.stem = nn.Sequential(ConvBNReLU(in_chans, s(64), 3), ConvBNReLU(s(64), stem_out, 3))
        else:
            raise ValueError(f"stem must be 'imagenet' or 'small', not {stem!r}")
        self.naive = naive
        channels = stem_out
        blocks = nn.Sequential()
        name = "0"
        for row in spec:
            if row == "pool":  # named after the stage it closes: pool3 after inception 3b
                blocks.add_module(f"pool{name[0]}", nn.MaxPool2d(3, stride=2, padding=1))
                continue
            name, *sizes = row
            m = inception_module(channels, [s(c) for c in sizes], naive)
            blocks.add_module(f"inception{name}", m)
            channels = m.out_channels
        self.blocks = blocks
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> pooled features (N, num_features)."""
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if self.num_classes == 0:
            return x
        return self.fc(self.dropout(x))


# --------------------------------------------------------------------------- registered factories


@register_arch(default_input=(3, 32, 32))
def googlenet(num_classes: int = 1000, in_chans: int = 3, width: int = 64, stem: str = "imagenet", dropout: float = 0.4) -> InceptionNet:
    """GoogLeNet: 9 reduced Inception modules (3a-5b), batch norm, no auxiliary classifiers."""
    return InceptionNet(GOOGLENET, width, naive=False, stem=stem, num_classes=num_classes, in_chans=in_chans, dropout=dropout)


@register_arch(default_input=(3, 32, 32))
def inception_small(num_classes: int = 10, in_chans: int = 3, width: int = 32, stem: str = "small", dropout: float = 0.4) -> InceptionNet:
    """Small Inception network for 28-64 px images: modules 3a, 3b, 4a, 4b with 1x1 reductions."""
    return InceptionNet(SMALL, width, naive=False, stem=stem, num_classes=num_classes, in_chans=in_chans, dropout=dropout)


@register_arch(default_input=(3, 32, 32))
def inception_small_naive(num_classes: int = 10, in_chans: int = 3, width: int = 32, stem: str = "small", dropout: float = 0.4) -> InceptionNet:
    """inception_small built from naive modules (no 1x1 reductions, pooling branch keeps every channel)."""
    return InceptionNet(SMALL, width, naive=True, stem=stem, num_classes=num_classes, in_chans=in_chans, dropout=dropout)
