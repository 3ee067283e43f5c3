"""torchvision architectures that timm lacks, with the timm interface the rest of the project uses.

Only SqueezeNet 1.1 (one of the lectures' classic models) lives here.  The
wrapper keeps torchvision's module names, so torchvision's weight file
(``squeezenet1_1-b8a52dc0.pth``) loads key for key, and adds what
:func:`transferkit.core.inference.embed` and the feature cache need:
``forward_features``, ``forward_head(pre_logits=True)``, ``get_classifier``
and ``num_features``.

Names are written ``torchvision:NAME`` in a registry entry's ``architecture``.
"""

from __future__ import annotations

from typing import Any

PREFIX = "torchvision:"
ARCHITECTURES = ("squeezenet1_1",)


def is_torchvision(arch: str) -> bool:
    return arch.startswith(PREFIX)


def create(arch: str, num_classes: int = 1000) -> Any:
    """Build ``torchvision:NAME`` with random weights and ``num_classes`` outputs."""
    import torch
    from torchvision.models.squeezenet import SqueezeNet

    from transferkit.errors import TransferkitError

    name = arch[len(PREFIX):]
    if name not in ARCHITECTURES:
        raise TransferkitError(f"Unknown torchvision architecture {name!r}; known: {', '.join(ARCHITECTURES)}.")

    class SqueezeNetTimm(SqueezeNet):
        """torchvision's SqueezeNet 1.1; x: (N, 3, 224, 224) -> features (N, 512, 13, 13) -> logits (N, K)."""

        num_features = 512

        def forward_features(self, x):  # (N, 3, H, W) -> (N, 512, H/16, W/16)
            return self.features(x)

        def forward_head(self, x, pre_logits: bool = False):
            if pre_logits:  # (N, 512, h, w) -> (N, 512): global average of the last fire module
                return x.mean(dim=(2, 3))
            return torch.flatten(self.classifier(x), 1)  # dropout, 1x1 conv to K maps, ReLU, average -> (N, K)

        def get_classifier(self):
            return self.classifier

    return SqueezeNetTimm(version="1_1", num_classes=num_classes)
