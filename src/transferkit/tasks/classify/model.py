"""The classifier network: a pretrained backbone (feature extractor) and a new head.

    image (N, 3, H, W) -> backbone -> pooled features (N, F) -> head -> logits (N, K)

The head standardises the features (fixed statistics of the training set),
then a stack of ``Linear -> ReLU`` blocks (``--head-layers``), each preceded by dropout, then a final
``Linear`` to the classes.  With no hidden
layers it is one linear layer, which is also what the ``features`` strategy
writes its scikit-learn classifier into, so every strategy ends with the same
kind of model directory and ``transferkit predict/features/export`` work on it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from transferkit.core.freezing import FrozenBNMixin
from transferkit.errors import TransferkitError


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with ``mean``/``std`` buffers (saved with the model, not trained).

    Set once from the training set's features before training
    (:meth:`set_stats`), so a frozen backbone's features of any scale reach the
    head standardised, identically in training and in evaluation (a BatchNorm
    here would need many steps before its running statistics fit, which a
    few hundred images do not give).
    """

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(torch.clamp(std.to(self.std), min=1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, F) -> (N, F)
        return (x - self.mean) / self.std


class Head(nn.Module):
    """``Standardize -> [Dropout -> Linear -> ReLU] * len(hidden) -> Dropout -> Linear(K)``.

    ``forward_features`` returns the input of ``fc`` (N, D): the "pre_logits"
    features of the whole classifier.  The ``features`` strategy stores its
    scikit-learn scaler in ``norm`` and its linear classifier in ``fc``.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.norm = Standardize(in_features)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            width = int(h)
        self.hidden = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (N, F) -> (N, D)
        return self.hidden(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, F) -> (N, K)
        return self.fc(self.drop(self.forward_features(x)))


@torch.no_grad()
def init_standardize(net: "Classifier", loader: Any, channels_last: bool = False, max_batches: int | None = None) -> int:
    """Set ``net.head.norm`` from the backbone's features of ``loader``'s images (eval mode); returns images seen."""
    was = net.training
    net.eval()
    total, s1, s2 = 0, None, None
    for b, (x, _) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = net.backbone(x).double()
        s1 = f.sum(0) if s1 is None else s1 + f.sum(0)
        s2 = (f * f).sum(0) if s2 is None else s2 + (f * f).sum(0)
        total += len(f)
    if total:
        mean = s1 / total
        std = torch.sqrt(torch.clamp(s2 / total - mean * mean, min=0))
        net.head.norm.set_stats(mean.float(), std.float())
    net.train(was)
    return total


class Classifier(FrozenBNMixin, nn.Module):
    """Backbone + head.  ``train()`` keeps frozen BatchNorm layers in eval mode.

    Args:
        backbone: module mapping (N, C, H, W) to pooled features (N, F), with
            an int ``num_features`` (timm models with ``num_classes=0``, and
            the project's registered architectures, follow this).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.num_features = int(getattr(backbone, "num_features"))
        self.head = Head(self.num_features, num_classes, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K) logits
        return self.head(self.backbone(x))

    def embed(self, x: torch.Tensor, layer: str = "pre_logits") -> torch.Tensor:
        """Feature vectors: ``pooled`` = the backbone's (N, F); ``pre_logits`` = what feeds the last linear layer."""
        if layer == "pooled":
            return self.backbone(x)
        if layer == "pre_logits":
            return self.head.forward_features(self.backbone(x))
        raise TransferkitError(f"Unknown feature layer {layer!r}; use pre_logits or pooled.")


# --------------------------------------------------------------------------- building


def create_backbone(name: str, weights: str = "pretrained", in_chans: int = 3):
    """A feature extractor and its preprocessing (None for from-scratch architectures).

    ``weights``: ``pretrained`` (resolved offline first), ``none`` (random
    initialisation) or a weights file.
    """
    from transferkit.core.registry import create_encoder

    w: Any = None if str(weights).lower() in ("none", "random", "scratch") else weights
    return create_encoder(name, in_chans=in_chans, weights=w)


def backbone_kind(name: str) -> str:
    """``arch`` for a registered from-scratch architecture, else ``timm``."""
    from transferkit.core.registry import is_arch

    return "arch" if is_arch(name) else "timm"


def build_model(config: dict[str, Any]) -> Classifier:
    """The untrained classifier a model directory's ``config.json`` describes (weights are loaded afterwards)."""
    arch = config["architecture"]
    kind = config.get("backbone_kind", "timm")
    in_chans = int((config.get("preprocessing") or {}).get("input_size", [3])[0])
    if kind == "arch":
        from transferkit.core.registry import create_arch

        backbone = create_arch(arch, num_classes=0, in_chans=in_chans)
    else:
        import timm

        backbone = timm.create_model(arch, pretrained=False, num_classes=0, **config.get("arch_kwargs", {}))
    return Classifier(backbone, int(config["num_classes"]), tuple(config.get("head_layers") or ()),
                      float(config.get("dropout", 0.0)))
