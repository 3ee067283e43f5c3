"""The Siamese network: one encoder applied to both images (shared weights), then a distance.

    image (N, C, H, W) in [0, 1]
      -> normalise (mean/std buffers, so the saved model takes plain pixels)
      -> encoder (small-cnn, a registered architecture or a pretrained backbone)   (N, F)
      -> projection to the embedding (identity when F == D)                         (N, D)
      -> pair head: sigmoid (Koch's features)  |  metric losses: L2 normalisation

"Twin" networks are one module called twice: there is a single set of
weights, so the two branches cannot drift apart.

Distances (smaller = more alike), the same scale for eval, calibration and verify:

* metric (contrastive, triplet): Euclidean distance between unit embeddings, in [0, 2];
* pair (Koch): ``-log p(same)`` where ``p = sigmoid(sum_j alpha_j |h1_j - h2_j| + b)``,
  i.e. ``softplus(-logit)``: monotone in Koch's score and never saturates to ties.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.core.freezing import FrozenBNMixin
from transferkit.errors import TransferkitError

SMALL_CNN = "small-cnn"
SMALL_CNN_WIDTHS = (32, 64, 64, 128)


class KochHead(nn.Module):
    """Koch et al.'s pair head: a learned weighting of the component-wise L1 distance, then a sigmoid."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 1)
        # Start with "farther apart = less alike" so early training is not spent finding the sign.
        nn.init.constant_(self.fc.weight, -1.0 / dim ** 0.5)
        nn.init.constant_(self.fc.bias, 1.0)

    def logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (N, D), (N, D) -> (N,)
        return self.fc((a - b).abs()).squeeze(-1)

    def cross_logits(self, a: torch.Tensor, b: torch.Tensor, chunk: int = 256) -> torch.Tensor:  # (n, D), (m, D) -> (n, m)
        rows = [self.fc((a[i:i + chunk, None, :] - b[None, :, :]).abs()).squeeze(-1) for i in range(0, len(a), chunk)]
        return torch.cat(rows) if rows else a.new_zeros(0, len(b))


class SiameseNet(FrozenBNMixin, nn.Module):
    """Encoder + projection + (pair) head; see the module docstring.

    Args:
        encoder: module (N, C, H, W) -> (N, encoder.num_features).
        embedding: D.
        head: ``pair`` (Koch) or ``metric``.
        in_chans: channels the encoder expects (grey inputs are repeated to 3,
            colour inputs averaged to 1 as needed).
        mean, std: per-channel normalisation of [0, 1] pixels.
    """

    def __init__(self, encoder: nn.Module, embedding: int, head: str, in_chans: int,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if head not in ("pair", "metric"):
            raise ValueError(f"head must be 'pair' or 'metric', not {head!r}")
        self.encoder = encoder
        self.in_chans = in_chans
        self.kind = head
        features = int(getattr(encoder, "num_features"))
        self.project = nn.Linear(features, embedding) if features != embedding else nn.Identity()
        self.head = KochHead(embedding) if head == "pair" else nn.Identity()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.embedding_size = embedding

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.in_chans:
            return x
        if self.in_chans == 3 and c == 1:
            return x.expand(-1, 3, -1, -1)
        if self.in_chans == 1 and c == 3:
            return x.mean(dim=1, keepdim=True)
        raise TransferkitError(f"The model takes {self.in_chans}-channel images, not {c}-channel ones.")

    def embed(self, x: torch.Tensor, layer: str = "embedding") -> torch.Tensor:
        """(N, C, H, W) pixels in [0, 1] -> (N, D) embeddings (Koch's sigmoid features, or unit vectors)."""
        x = (self._channels(x) - self.mean) / self.std
        return self._finish(self.project(self.encoder(x)), layer)

    def embed_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, C, H, W) pixels -> (N, D) embeddings and the encoder's last feature map (N, C', h, w).

        The map is what local matching compares (``matching.local_similarity``);
        None for encoders without a ``forward_features``/``forward_head`` split.
        """
        enc = self.encoder
        if not (hasattr(enc, "forward_features") and hasattr(enc, "forward_head")):
            return self.embed(x), None
        fmap = enc.forward_features((self._channels(x) - self.mean) / self.std)
        if fmap.ndim != 4:
            return self.embed(x), None
        return self._finish(self.project(enc.forward_head(fmap))), fmap  # forward_head(forward_features(x)) == enc(x)

    def _finish(self, z: torch.Tensor, layer: str = "embedding") -> torch.Tensor:
        if layer == "raw":
            return z
        return torch.sigmoid(z) if self.kind == "pair" else F.normalize(z.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # one twin: (N, C, H, W) -> (N, D)
        return self.embed(x)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances of aligned rows: (N, D), (N, D) -> (N,)."""
        if self.kind == "pair":
            return F.softplus(-self.head.logits(a, b))
        return (a - b).norm(dim=-1)

    def cdist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """All distances: (n, D), (m, D) -> (n, m)."""
        if self.kind == "pair":
            return F.softplus(-self.head.cross_logits(a, b))
        return torch.cdist(a.float(), b.float())


# --------------------------------------------------------------------------- building


def small_cnn_widths(width: float) -> tuple[int, ...]:
    """small-cnn channel widths for a multiplier (1: 32,64,64,128; 2: Koch's 64,128,128,256)."""
    return tuple(max(4, int(round(w * width))) for w in SMALL_CNN_WIDTHS)


def make_encoder(name: str, in_chans: int, image_size: int, embedding: int, width: float = 1.0,
                 weights: str | None = "pretrained") -> tuple[nn.Module, Any]:
    """The encoder and, for pretrained backbones, its :class:`Preprocessing` (None otherwise).

    ``small-cnn`` is built with ``num_features = embedding`` (its dense layer
    is the embedding) and no activation; other registered architectures and
    timm backbones are created through ``core.registry.create_encoder``.
    """
    from transferkit.core.registry import create_arch, create_encoder

    if name == SMALL_CNN:
        enc = create_arch(SMALL_CNN, num_classes=0, in_chans=in_chans, image_size=image_size,
                          widths=small_cnn_widths(width), num_features=embedding, activation="none")
        return enc, None
    if weights in (None, "none"):
        return create_encoder(name, in_chans=in_chans, weights=None)
    return create_encoder(name, in_chans=in_chans, weights=weights)


def build_model(config: dict[str, Any]) -> SiameseNet:
    """The untrained network a siamese ``config.json`` describes (weights are loaded by ``core.modeldir``)."""
    s = config["siamese"]
    name = config["architecture"]
    image_size = int(config["preprocessing"]["input_size"][-1])
    if name == SMALL_CNN:
        encoder, _ = make_encoder(name, int(s["in_chans"]), image_size, int(s["embedding"]), float(s.get("width", 1.0)))
    else:
        from transferkit.core.registry import create_encoder, is_arch

        if is_arch(name):
            encoder, _ = create_encoder(name, in_chans=int(s["in_chans"]))
        else:
            encoder, _ = create_encoder(name, in_chans=3, weights=None)  # weights come from model.safetensors
    return SiameseNet(encoder, int(s["embedding"]), s["head"], int(s["in_chans"]), s["mean"], s["std"])
