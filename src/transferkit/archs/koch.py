"""Koch, Zemel and Salakhutdinov (2015): the convolutional twin of a Siamese network for one-shot characters.

The original network reads a 105x105 grey character through four
convolution stages and one dense layer::

    conv 64@10x10 -> ReLU -> max-pool 2
    conv 128@7x7  -> ReLU -> max-pool 2
    conv 128@4x4  -> ReLU -> max-pool 2
    conv 256@4x4  -> ReLU                  (N, 256, 6, 6)
    flatten -> dense 4096 -> sigmoid       (N, 4096): the twin's features

Two copies with shared weights embed two images; the Siamese head (in
``transferkit.tasks.siamese``) compares them.  This module keeps that design
and makes it practical on a laptop CPU:

* ``image_size`` scales the kernel sizes with the input (105 px: 10, 7, 4, 4;
  52 px: 5, 3, 2, 2), so a half-resolution character sees the same part of
  the stroke with ~16x fewer multiply-adds;
* batch normalisation after each convolution (off with ``batchnorm=False``)
  lets it train in minutes instead of the paper's hours;
* ``widths`` and ``num_features`` shrink the network (the default is half
  the paper's widths and a 128-d feature);
* ``activation``: the paper's ``sigmoid`` on the features (what its weighted
  L1 head expects), or ``none`` for metric losses that normalise embeddings.

Registered as ``small-cnn`` (``--encoder small-cnn``).  With ``num_classes=0``
it returns the features ``(N, num_features)``; with ``num_classes > 0`` a
linear classifier follows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from transferkit.core.registry import register_arch

KOCH_KERNELS = (10, 7, 4, 4)
KOCH_WIDTHS = (64, 128, 128, 256)
KOCH_SIZE = 105


class ConvStage(nn.Module):
    """conv k x k (no padding) -> batch norm -> ReLU -> optional 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, kernel: int, pool: bool, batchnorm: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, bias=not batchnorm)
        self.norm = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, cin, H, W) -> (N, cout, H', W')
        return self.pool(self.act(self.norm(self.conv(x))))


def scaled_kernels(image_size: int, kernels: Sequence[int] = KOCH_KERNELS) -> tuple[int, ...]:
    """Kernel sizes for ``image_size``: the paper's sizes scaled by image_size / 105 (at least 2)."""
    return tuple(max(2, round(k * image_size / KOCH_SIZE)) for k in kernels)


def feature_map_size(image_size: int, kernels: Sequence[int]) -> int:
    """Side of the last feature map: valid convolutions, a 2x2 pool after all but the last stage."""
    s = image_size
    for i, k in enumerate(kernels):
        s = s - k + 1
        if s < 1:
            break
        if i < len(kernels) - 1:
            s //= 2
    return s


class KochNet(nn.Module):
    """Koch et al.'s twin network (see the module docstring).

    Args:
        num_classes: 0 returns the features; > 0 adds a linear classifier.
        in_chans: 1 for grey characters (3 works too).
        image_size: the side of the square input the kernels are scaled for.
        widths: channels of the four convolution stages.
        kernels: kernel sizes at 105 px (scaled to ``image_size``).
        num_features: size of the dense feature layer (the embedding).
        batchnorm: batch normalisation after every convolution.
        activation: ``sigmoid`` (the paper) or ``none`` on the features.
        drop_rate: dropout before the dense layer.
    """

    def __init__(
        self,
        num_classes: int = 0,
        in_chans: int = 1,
        image_size: int = KOCH_SIZE,
        widths: Sequence[int] = KOCH_WIDTHS,
        kernels: Sequence[int] = KOCH_KERNELS,
        num_features: int = 4096,
        batchnorm: bool = True,
        activation: str = "sigmoid",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if len(widths) != len(kernels):
            raise ValueError(f"widths ({len(widths)}) and kernels ({len(kernels)}) must have the same length")
        if activation not in ("sigmoid", "none"):
            raise ValueError(f"activation must be 'sigmoid' or 'none', not {activation!r}")
        ks = scaled_kernels(image_size, kernels)
        side = feature_map_size(image_size, ks)
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for kernels {ks}")
        self.image_size = image_size
        self.kernels = ks
        self.num_features = num_features
        self.num_classes = num_classes
        chans = [in_chans, *widths]
        self.stages = nn.Sequential(
            *[ConvStage(chans[i], chans[i + 1], k, pool=i < len(ks) - 1, batchnorm=batchnorm) for i, k in enumerate(ks)]
        )
        # Inputs of another size still work: the last map is pooled to the side the dense layer was built for.
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(widths[-1] * side * side, num_features)
        self.act = nn.Sigmoid() if activation == "sigmoid" else nn.Identity()
        self.classifier = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, widths[-1], s, s)
        return self.pool(self.stages(x))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = self.act(self.fc(self.drop(feats.flatten(1))))  # (N, num_features)
        return z if pre_logits else self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, num_classes or num_features)
        return self.forward_head(self.forward_features(x))


@register_arch(name="small-cnn", default_input=(1, 52, 52))
def small_cnn(num_classes: int = 0, in_chans: int = 1, image_size: int = 52, widths: Sequence[int] = (32, 64, 64, 128),
              num_features: int = 128, **kw) -> KochNet:
    """Koch et al.'s Siamese twin CNN for grey characters, scaled for a CPU (kernels follow image_size)."""
    return KochNet(num_classes=num_classes, in_chans=in_chans, image_size=image_size, widths=widths,
                   num_features=num_features, **kw)
