"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document recognition").

C1: 6 feature maps from 5x5 convolutions; S2: 2x2 subsampling; C3: 16 maps of
5x5 convolutions; S4: 2x2 subsampling; C5: 120 units, each seeing the whole
16x5x5 map; F6: 84 units; output: one unit per class.  Tanh activations and
average pooling, as in the paper.  Three modern simplifications, all common:
C3 connects to all six S2 maps (the paper's sparse connection table saved
computation in 1998), S2/S4 are plain average pools (the paper's had a
trainable coefficient and bias), and the output layer is a linear layer
(the paper's was a Gaussian RBF).

The network was drawn for 32x32 inputs (MNIST digits padded by 2).  Here C1
pads by 2, so a 28x28 MNIST digit flows through exactly the paper's shapes
(28 -> 14 -> 10 -> 5 -> 1); other sizes (32x32, 105x105, 224x224) are
averaged to the 5x5 map C5 expects.  With 10 classes and one input channel:
61,706 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from transferkit.core.registry import register_arch


class LeNet5(nn.Module):
    """LeNet-5.

    Args:
        num_classes: 0 returns the 84 F6 activations ``(N, 84)``.
        in_chans: input channels (1 for the paper's grey digits).

    Shapes: (N, in_chans, H, W), H and W >= 12 -> (N, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(in_chans, 6, 5, padding=2)  # (N, 6, H, W)
        self.s2 = nn.AvgPool2d(2)                       # (N, 6, H/2, W/2)
        self.c3 = nn.Conv2d(6, 16, 5)                   # (N, 16, H/2-4, W/2-4)
        self.s4 = nn.AvgPool2d(2)                       # (N, 16, 5, 5) for 28x28
        self.fit = nn.AdaptiveAvgPool2d(5)              # identity for 28x28 inputs
        self.c5 = nn.Linear(16 * 5 * 5, 120)            # = a 5x5 convolution over the 5x5 map
        self.f6 = nn.Linear(120, 84)
        self.act = nn.Tanh()
        self.num_features = 84
        self.fc = nn.Linear(84, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> F6 activations (N, 84)."""
        x = self.s2(self.act(self.c1(x)))
        x = self.s4(self.act(self.c3(x)))
        x = torch.flatten(self.fit(x), 1)
        return self.act(self.f6(self.act(self.c5(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


@register_arch(default_input=(1, 28, 28))
def lenet5(num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998): two 5x5 conv + average-pool stages, 120-84 fully connected, tanh."""
    return LeNet5(num_classes=num_classes, in_chans=in_chans)
