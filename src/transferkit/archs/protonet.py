"""The four-block embedding network of Prototypical Networks (Snell, Swersky and Zemel 2017) and Matching Networks.

Four identical blocks, each::

    conv 3x3 (padding 1) -> batch norm -> ReLU -> max-pool 2        (N, width, H/2, W/2)

so a 28x28 Omniglot character ends as a (N, 64, 1, 1) map and the flattened
map is the embedding (64-d at 28 px, 256-d at 32 px).  It is the standard
few-shot baseline on Omniglot (28 px) and mini-ImageNet (84 px): small, fast
on a CPU, and every layer sees the whole stroke at 28 px.

Registered as ``conv4``; with ``num_classes > 0`` a linear classifier follows.
"""

from __future__ import annotations

import torch
from torch import nn

from transferkit.core.registry import register_arch


class ConvBlock(nn.Module):
    """conv 3x3 -> batch norm -> ReLU -> 2x2 max-pool: (N, cin, H, W) -> (N, cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class Conv4(nn.Module):
    """Snell et al.'s embedding network.

    Args:
        num_classes: 0 returns the flattened last map (the embedding).
        in_chans: 1 for grey characters.
        width: channels of every block (64 in the paper).
        image_size: the input side the flattened size is computed for; other
            sizes are average-pooled to that map so the embedding size is fixed.
    """

    def __init__(self, num_classes: int = 0, in_chans: int = 1, width: int = 64, image_size: int = 28):
        super().__init__()
        self.blocks = nn.Sequential(ConvBlock(in_chans, width), *[ConvBlock(width, width) for _ in range(3)])
        side = max(1, image_size // 16)
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.num_features = width * side * side
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, width, side, side)
        return self.pool(self.blocks(x))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = feats.flatten(1)  # (N, num_features)
        return z if pre_logits else self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_arch(name="conv4", default_input=(1, 28, 28))
def conv4(num_classes: int = 0, in_chans: int = 1, width: int = 64, image_size: int = 28, **kw) -> Conv4:
    """Prototypical Networks' 4-block CNN (64 channels, 3x3 convs) for 28 px characters."""
    return Conv4(num_classes=num_classes, in_chans=in_chans, width=width, image_size=image_size, **kw)
