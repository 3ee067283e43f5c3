"""Residual networks and their plain twins (He, Zhang, Ren, Sun 2015, "Deep Residual Learning").

Read top to bottom: the two blocks, then the network that stacks them, then the
registered factories.

A residual block computes ``y = relu(F(x) + x)`` (identity shortcut) or, when the
block changes the number of channels or the resolution, ``y = relu(F(x) + W x)``
with ``W`` a strided 1x1 convolution + batch norm (the paper's "option B"
projection shortcut).  ``plain=True`` removes the shortcut altogether:
``y = relu(F(x))``.  Everything else (layers, widths, initialisation, parameter
names of the residual branch) is identical, so ``plain34`` is exactly
``resnet34`` without its shortcuts: the twin the paper's degradation experiment
compares.

Two stacks are registered, each in a residual and a plain version:

* ImageNet-style (section 4.1): ``resnet18/34/50`` and ``plain18/34/50``,
  stages of width 64-128-256-512 (times 4 at the output of a bottleneck) after
  a 7x7/2 convolution and a 3x3/2 max-pool;
* CIFAR-style (section 4.2, 6n+2 layers): ``resnet20/32/44/56/110`` and the
  plain ones, three stages of width 16-32-64 after one 3x3 convolution.

``width`` scales every stage (``width=16`` gives a ResNet-18 with stages
16-32-64-128) and ``stem="small"`` replaces the ImageNet stem by one 3x3
convolution at stride 1, for 28x28 or 32x32 inputs, where a stride-4 stem
would throw away most of the image.  Any input from 8x8 up works: the head
pools globally.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from transferkit.core.registry import register_arch

Stem = Literal["imagenet", "small"]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 (no bias: a batch norm follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution (no bias: a batch norm follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def make_shortcut(in_ch: int, out_ch: int, stride: int, plain: bool) -> nn.Module | None:
    """The shortcut of a block: None (plain), identity, or projection ``W x`` when shapes change."""
    if plain:
        return None
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    # (N, in_ch, H, W) -> (N, out_ch, H/stride, W/stride), so that F(x) + W x is defined
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


# --------------------------------------------------------------------------- blocks


class BasicBlock(nn.Module):
    """Two 3x3 convolutions: ``F(x) = bn(conv(relu(bn(conv(x)))))``, output ``relu(F(x) + shortcut(x))``.

    Args:
        in_ch: input channels.
        width: channels of both convolutions (the block outputs ``width * expansion`` = ``width``).
        stride: 2 for the first block of a stage (halves H and W), else 1.
        plain: no shortcut: the output is ``relu(F(x))``.
    """

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1, plain: bool = False):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(in_ch, out_ch, stride, plain)
        self.out_channels = out_ch

    @property
    def plain(self) -> bool:
        return self.shortcut is None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``F(x)``: (N, in_ch, H, W) -> (N, width, H/stride, W/stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4): the block of ResNet-50 and deeper.

    The stride sits on the 3x3 convolution (as in torchvision's ResNet "v1.5";
    the paper put it on the first 1x1), which is slightly more accurate.

    Args:
        in_ch: input channels.
        width: channels of the 1x1 reduction and the 3x3; the block outputs ``4 * width``.
        stride: 2 for the first block of a stage, else 1.
        plain: no shortcut.
    """

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, plain: bool = False):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(in_ch, out_ch, stride, plain)
        self.out_channels = out_ch

    @property
    def plain(self) -> bool:
        return self.shortcut is None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``F(x)``: (N, in_ch, H, W) -> (N, 4*width, H/stride, W/stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


# --------------------------------------------------------------------------- the network


def make_stem(in_chans: int, width: int, stem: str) -> nn.Sequential:
    """ImageNet stem (7x7/2 conv + 3x3/2 max-pool: H/4) or small stem (3x3/1 conv: H)."""
    if stem == "imagenet":
        return nn.Sequential(
            nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    if stem == "small":
        return nn.Sequential(conv3x3(in_chans, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    raise ValueError(f"stem must be 'imagenet' or 'small', not {stem!r}")


class ResNet(nn.Module):
    """A stem, stages of blocks (the first block of every stage but the first halves H and W), global pooling, a classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        widths: block width per stage, e.g. (64, 128, 256, 512).
        num_classes: outputs of the classifier; 0 returns the pooled features ``(N, num_features)``.
        in_chans: input channels.
        plain: build the plain twin (no shortcuts anywhere).
        stem: ``imagenet`` or ``small`` (see :func:`make_stem`).

    Shapes: (N, in_chans, H, W) -> (N, num_classes), or (N, num_features) when num_classes is 0.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        plain: bool = False,
        stem: Stem = "imagenet",
    ):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError("layers and widths need one entry per stage")
        self.plain = plain
        self.stem = make_stem(in_chans, widths[0], stem)
        channels = widths[0]
        stages = []
        for i, (n_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                b = block(channels, width, stride, plain)
                channels = b.out_channels
                blocks.append(b)
            stages.append(nn.Sequential(*blocks))
        # named layer1..layerN, as in the paper's tables and torchvision
        for i, stage in enumerate(stages, 1):
            self.add_module(f"layer{i}", stage)
        self.n_stages = len(stages)
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialisation, the same for the residual and the plain twin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> pooled features (N, num_features)."""
        x = self.stem(x)
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


# --------------------------------------------------------------------------- registered factories


def _imagenet(block, layers, plain, num_classes, in_chans, width, stem) -> ResNet:
    widths = tuple(width * 2**i for i in range(4))
    return ResNet(block, layers, widths, num_classes=num_classes, in_chans=in_chans, plain=plain, stem=stem)


def _cifar(n: int, plain: bool, num_classes: int, in_chans: int, width: int, stem: str) -> ResNet:
    widths = (width, 2 * width, 4 * width)
    return ResNet(BasicBlock, (n, n, n), widths, num_classes=num_classes, in_chans=in_chans, plain=plain, stem=stem)


@register_arch(default_input=(3, 32, 32))
def resnet18(num_classes: int = 1000, in_chans: int = 3, width: int = 64, stem: Stem = "imagenet") -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2), stages width-2w-4w-8w (He et al. 2015, table 1)."""
    return _imagenet(BasicBlock, (2, 2, 2, 2), False, num_classes, in_chans, width, stem)


@register_arch(default_input=(3, 32, 32))
def resnet34(num_classes: int = 1000, in_chans: int = 3, width: int = 64, stem: Stem = "imagenet") -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return _imagenet(BasicBlock, (3, 4, 6, 3), False, num_classes, in_chans, width, stem)


@register_arch(default_input=(3, 32, 32))
def resnet50(num_classes: int = 1000, in_chans: int = 3, width: int = 64, stem: Stem = "imagenet") -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), outputs 4x the stage width."""
    return _imagenet(Bottleneck, (3, 4, 6, 3), False, num_classes, in_chans, width, stem)


@register_arch(default_input=(3, 32, 32))
def plain18(num_classes: int = 1000, in_chans: int = 3, width: int = 64, stem: Stem = "imagenet") -> ResNet:
    """Plain-18: ResNet-18 without shortcuts (the paper's plain baseline)."""
    return _imagenet(BasicBlock, (2, 2, 2, 2), True, num_classes, in_chans, width, stem)


@register_arch(default_input=(3, 32, 32))
def plain34(num_classes: int = 1000, in_chans: int = 3, width: int = 64, stem: Stem = "imagenet") -> ResNet:
    """Plain-34: ResNet-34 without shortcuts."""
    return _imagenet(BasicBlock, (3, 4, 6, 3), True, num_classes, in_chans, width, stem)


@register_arch(default_input=(3, 32, 32))
def plain50(num_classes: int = 1000, in_chans: int = 3, width: int = 64, stem: Stem = "imagenet") -> ResNet:
    """Plain-50: ResNet-50 without shortcuts."""
    return _imagenet(Bottleneck, (3, 4, 6, 3), True, num_classes, in_chans, width, stem)


def _register_cifar(depth: int) -> None:
    """resnetD and plainD with D = 6n + 2 (three stages of n basic blocks, widths 16-32-64)."""
    n = (depth - 2) // 6

    def residual(num_classes: int = 10, in_chans: int = 3, width: int = 16, stem: Stem = "small") -> ResNet:
        return _cifar(n, False, num_classes, in_chans, width, stem)

    def plain(num_classes: int = 10, in_chans: int = 3, width: int = 16, stem: Stem = "small") -> ResNet:
        return _cifar(n, True, num_classes, in_chans, width, stem)

    for fn, kind, text in ((residual, "resnet", "ResNet"), (plain, "plain", "Plain")):
        fn.__name__ = fn.__qualname__ = f"{kind}{depth}"
        fn.__module__ = __name__
        desc = f"{text}-{depth} for 32x32 images: 3 stages of {n} basic blocks, widths 16-32-64 (He et al. 2015, section 4.2)"
        register_arch(fn, default_input=(3, 32, 32), description=desc)
        globals()[fn.__name__] = fn


for _depth in (20, 32, 44, 56, 110):
    _register_cifar(_depth)
