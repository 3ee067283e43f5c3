"""VGG networks (Simonyan & Zisserman 2014): stacks of 3x3 convolutions, a 2x2 max-pool after each block.

Read top to bottom: the block, the network, the registered factories.

Five blocks of widths w, 2w, 4w, 8w, 8w (w = 64 in the paper) with 1-4
convolutions each (configurations A, B, D, E = VGG-11, 13, 16, 19), then a
classifier.  Batch norm after every convolution is on by default (VGG without
it barely trains from scratch at these depths; ``batch_norm=False`` gives the
original).

The classifier of the paper flattens a 7x7x512 map into two 4096-wide fully
connected layers (about 120 of VGG-16's 138 million parameters).  By default
the map is averaged to 1x1 instead and the hidden layers are 512 wide, which
works for any input size from 32x32 and keeps the network trainable on a
laptop; ``pool_size=7, hidden=4096`` rebuilds the paper's classifier exactly
(``vgg16(pool_size=7, hidden=4096, batch_norm=False)`` has 138,357,544
parameters, like torchvision's).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from transferkit.core.registry import register_arch

# convolutions per block; table 1 of the paper
CONFIGS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


class VGGBlock(nn.Sequential):
    """``n`` x (3x3 conv [-> batch norm] -> ReLU), then a 2x2 max-pool.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, ceil(H/2), ceil(W/2)) (ceil, so 1x1 maps survive the pool).
    """

    def __init__(self, in_ch: int, out_ch: int, n: int, batch_norm: bool = True):
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
        super().__init__(*layers)


class VGG(nn.Module):
    """Five :class:`VGGBlock` s, adaptive average pooling to ``pool_size``, hidden layers, a classifier.

    Args:
        convs: convolutions per block, e.g. (2, 2, 3, 3, 3) for VGG-16.
        width: first block width (the paper: 64); blocks are w, 2w, 4w, 8w, 8w.
        hidden: width of the two hidden fully connected layers (0: none).
        pool_size: side of the map before flattening (the paper: 7).
        num_classes: 0 returns the features before the classifier ``(N, num_features)``.

    Shapes: (N, in_chans, H, W) -> (N, num_classes).
    """

    def __init__(
        self,
        convs: Sequence[int],
        width: int = 64,
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = True,
        hidden: int = 512,
        pool_size: int = 1,
        dropout: float = 0.5,
    ):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width][: len(convs)]
        blocks = []
        ch = in_chans
        for n, w in zip(convs, widths):
            blocks.append(VGGBlock(ch, w, n, batch_norm))
            ch = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        flat = ch * pool_size * pool_size
        if hidden > 0:
            # fc6, fc7 of the paper: (N, flat) -> (N, hidden)
            self.pre_logits = nn.Sequential(
                nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            )
            self.num_features = hidden
        else:
            self.pre_logits = nn.Identity()
            self.num_features = flat
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_features)."""
        return self.pre_logits(torch.flatten(self.pool(self.features(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


# --------------------------------------------------------------------------- registered factories


def _vgg(name: str, num_classes: int, in_chans: int, width: int, **kw) -> VGG:
    return VGG(CONFIGS[name], width=width, num_classes=num_classes, in_chans=in_chans, **kw)


@register_arch(default_input=(3, 32, 32))
def vgg11(num_classes: int = 1000, in_chans: int = 3, width: int = 64, batch_norm: bool = True, hidden: int = 512,
          pool_size: int = 1, dropout: float = 0.5) -> VGG:
    """VGG-11 (configuration A): 8 convolutions, 3 fully connected layers."""
    return _vgg("vgg11", num_classes, in_chans, width, batch_norm=batch_norm, hidden=hidden, pool_size=pool_size, dropout=dropout)


@register_arch(default_input=(3, 32, 32))
def vgg13(num_classes: int = 1000, in_chans: int = 3, width: int = 64, batch_norm: bool = True, hidden: int = 512,
          pool_size: int = 1, dropout: float = 0.5) -> VGG:
    """VGG-13 (configuration B): 10 convolutions."""
    return _vgg("vgg13", num_classes, in_chans, width, batch_norm=batch_norm, hidden=hidden, pool_size=pool_size, dropout=dropout)


@register_arch(default_input=(3, 32, 32))
def vgg16(num_classes: int = 1000, in_chans: int = 3, width: int = 64, batch_norm: bool = True, hidden: int = 512,
          pool_size: int = 1, dropout: float = 0.5) -> VGG:
    """VGG-16 (configuration D): 13 convolutions."""
    return _vgg("vgg16", num_classes, in_chans, width, batch_norm=batch_norm, hidden=hidden, pool_size=pool_size, dropout=dropout)


@register_arch(default_input=(3, 32, 32))
def vgg19(num_classes: int = 1000, in_chans: int = 3, width: int = 64, batch_norm: bool = True, hidden: int = 512,
          pool_size: int = 1, dropout: float = 0.5) -> VGG:
    """VGG-19 (configuration E): 16 convolutions."""
    return _vgg("vgg19", num_classes, in_chans, width, batch_norm=batch_norm, hidden=hidden, pool_size=pool_size, dropout=dropout)
