"""Autoencoder networks, read top to bottom: channel matching, dense layers, conv layers, the classifier.

Every network takes images in [0, 1], ``(N, C, H, W)``, and has

* ``encode(x) -> (N, latent)`` codes, ``decode(z) -> (N, C_out, H, W)`` images in [0, 1],
* ``forward(x) = decode(encode(x))``, and ``embed(x, layer)`` = the codes (so
  :func:`transferkit.api.features` and the similarity index can use it).

Inputs with 3 channels given to a grey network are converted to luma (and grey
inputs to a colour network repeated), so the model directory works with the
RGB pipeline of ``transferkit features`` too.

The dense network keeps its layers as pairs (``encoder.layers[i]``,
``decoder.layers[i]``): pair ``i`` is exactly the one-hidden-layer autoencoder
that greedy layer-wise pretraining trains on the codes of the pairs before it,
so the stacked autoencoder *is* a dense one once its pairs are trained.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ITU-R 601-2 luma, the weights Pillow's convert("L") uses: the grey images of training match these.
LUMA = (0.299, 0.587, 0.114)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, c, H, W) -> (N, channels, H, W): RGB -> luma, grey -> repeated; otherwise unchanged."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"cannot feed {have}-channel images to a {channels}-channel network")


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-3, 1 - 1e-3)
    return torch.log(p / (1 - p))


def code_activation(name: str) -> nn.Module:
    """The code's non-linearity: ``linear`` (plain codes) or ``sigmoid`` (codes in (0, 1), for KL sparsity)."""
    if name == "linear":
        return nn.Identity()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown code activation {name!r}")


# --------------------------------------------------------------------------- dense


class DenseEncoder(nn.Module):
    """sizes = (D, h1, ..., latent): Linear+ELU per hidden layer, Linear+code activation last.

    ELU rather than ReLU: with ReLU many units die and the test error on MNIST
    is about 1.5x higher (0.0096 vs 0.0066 per pixel, see BENCHMARKS.md).

    ``forward(x, upto=k)`` runs only the first ``k`` layers (the codes that
    layer ``k`` of greedy pretraining learns from).
    """

    def __init__(self, sizes: Sequence[int], code_act: str = "linear"):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.code_act = code_activation(code_act)

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` with its activation: (N, sizes[i]) -> (N, sizes[i+1])."""
        h = self.layers[i](h)
        return self.code_act(h) if i == len(self.layers) - 1 else F.elu(h)

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        h = x.flatten(1)  # (N, C*H*W)
        for i in range(len(self.layers) if upto is None else upto):
            h = self.layer(i, h)
        return h


class DenseDecoder(nn.Module):
    """Mirror of :class:`DenseEncoder`: layers[i] maps sizes[i+1] -> sizes[i]; applied last to first.

    Layer 0 ends in a sigmoid (pixels in [0, 1]); the others in ELU, like the
    codes they reconstruct.
    """

    def __init__(self, sizes: Sequence[int], out_shape: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(b, a) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out_shape = tuple(out_shape)

    def layer(self, i: int, z: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` with its activation: (N, sizes[i+1]) -> (N, sizes[i])."""
        h = self.layers[i](z)
        return torch.sigmoid(h) if i == 0 else F.elu(h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i in reversed(range(len(self.layers))):
            h = self.layer(i, h)
        return h.view(-1, *self.out_shape)  # (N, C_out, H, W)


class DenseAE(nn.Module):
    """Fully connected autoencoder ``D -> hidden... -> latent -> ...hidden -> D_out``.

    Args:
        in_shape: (C, H, W) of the input.
        hidden: hidden layer sizes, shrinking (e.g. (512, 256)).
        latent: code size.
        out_channels: channels of the output (3 for colourisation of grey inputs).
        code_act: ``linear`` or ``sigmoid``.
    """

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int], latent: int, out_channels: int | None = None,
                 code_act: str = "linear"):
        super().__init__()
        c, h, w = in_shape
        self.in_channels = c
        out_c = out_channels or c
        self.sizes = (c * h * w, *hidden, latent)
        self.encoder = DenseEncoder(self.sizes, code_act)
        dec_sizes = (out_c * h * w, *hidden, latent)
        self.decoder = DenseDecoder(dec_sizes, (out_c, h, w))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(match_channels(x, self.in_channels))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def embed(self, x: torch.Tensor, layer: str = "pre_logits") -> torch.Tensor:
        return self.encode(x)

    @torch.no_grad()
    def init_output(self, mean_image: torch.Tensor) -> None:
        """Start the output at the training mean image (C, H, W): skips the long plateau where the
        network first learns the mean through a saturated sigmoid."""
        self.decoder.layers[0].bias.copy_(_logit(mean_image.flatten()))


# --------------------------------------------------------------------------- convolutional


def _padded(n: int, levels: int) -> int:
    """Smallest size >= n divisible by 2**levels (each level halves the map)."""
    m = 2 ** levels
    return -(-n // m) * m


class ConvAE(nn.Module):
    """Convolutional autoencoder: stride-2 conv blocks, a linear code, transposed convs back.

    Shapes for MNIST with channels (32, 64): (N,1,28,28) -> (N,32,14,14) ->
    (N,64,7,7) -> (N,latent) -> (N,64,7,7) -> (N,32,14,14) -> (N,1,28,28).
    Inputs whose sides are not divisible by 2**len(channels) are zero-padded
    on the bottom/right and the output cropped back.
    """

    def __init__(self, in_shape: Sequence[int], channels: Sequence[int], latent: int, out_channels: int | None = None,
                 code_act: str = "linear"):
        super().__init__()
        c, h, w = in_shape
        self.in_channels = c
        self.size = (h, w)
        out_c = out_channels or c
        levels = len(channels)
        self.padded = (_padded(h, levels), _padded(w, levels))
        gh, gw = self.padded[0] >> levels, self.padded[1] >> levels
        self.grid = (channels[-1], gh, gw)
        enc: list[nn.Module] = []
        prev = c
        for ch in channels:  # each block halves H and W
            enc += [nn.Conv2d(prev, ch, 3, stride=2, padding=1), nn.BatchNorm2d(ch), nn.ReLU(inplace=True),
                    nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(inplace=True)]
            prev = ch
        self.features = nn.Sequential(*enc)
        self.to_code = nn.Linear(channels[-1] * gh * gw, latent)
        self.code_act = code_activation(code_act)
        self.from_code = nn.Linear(latent, channels[-1] * gh * gw)
        dec: list[nn.Module] = []
        outs = list(reversed(channels[:-1])) + [out_c]
        for i, (a, b) in enumerate(zip(reversed(channels), outs)):  # each block doubles H and W
            last = i == levels - 1
            dec += [nn.Conv2d(a, a, 3, padding=1), nn.ReLU(inplace=True),
                    nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1)]
            if not last:
                dec += [nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = match_channels(x, self.in_channels)
        ph, pw = self.padded[0] - x.shape[2], self.padded[1] - x.shape[3]
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph))
        return self.code_act(self.to_code(self.features(x).flatten(1)))  # (N, latent)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        g = torch.relu(self.from_code(z)).view(-1, *self.grid)  # (N, C_last, h/2^L, w/2^L)
        out = torch.sigmoid(self.upsample(g))
        return out[:, :, : self.size[0], : self.size[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def embed(self, x: torch.Tensor, layer: str = "pre_logits") -> torch.Tensor:
        return self.encode(x)

    @torch.no_grad()
    def init_output(self, mean_image: torch.Tensor) -> None:
        """Start the output near the training mean: the last layer's bias = logit(mean of each channel)."""
        last = self.upsample[-1]
        last.bias.copy_(_logit(mean_image.mean(dim=(1, 2))))


# --------------------------------------------------------------------------- classifier on a pretrained encoder


class EncoderClassifier(nn.Module):
    """An autoencoder's encoder with a linear head: the network `autoencoder finetune` trains.

    ``ae`` keeps the whole autoencoder so the weights load by the same names;
    only ``ae.encode`` is used.  ``forward`` returns logits (N, num_classes).
    """

    def __init__(self, ae: nn.Module, latent: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.ae = ae
        # the decoder is not part of the classifier: drop it so the saved file holds what is used
        if hasattr(ae, "decoder"):
            ae.decoder = nn.Identity()
        for name in ("from_code", "upsample"):
            if hasattr(ae, name):
                setattr(ae, name, nn.Identity())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(latent, num_classes)

    def encoder_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("head.")]

    def embed(self, x: torch.Tensor, layer: str = "pre_logits") -> torch.Tensor:
        return self.ae.encode(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.ae.encode(x)))
