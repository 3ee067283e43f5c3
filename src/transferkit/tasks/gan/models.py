"""The networks: DCGAN generator and discriminator (Radford, Metz, Chintala 2016), and pix2pix's U-Net
generator and PatchGAN discriminator (Isola, Zhu, Zhou, Efros 2017).

DCGAN, for a square side S (a multiple of 4, 16..128): S is halved ``n`` times down to a base side
``s0`` of 4..7 (28 -> 14 -> 7: n = 2, s0 = 7; 32 -> 4: n = 3; 64 -> 4: n = 4).  The generator projects z
to (width * 2^(n-1), s0, s0) with a transposed convolution, then doubles the side n times with
stride-2 transposed convolutions, halving the channels; batch norm and ReLU inside, tanh at the
output.  The discriminator mirrors it: stride-2 convolutions, LeakyReLU(0.2), batch norm (or spectral
norm) and a last s0 x s0 convolution to one logit.  No pooling and no fully connected hidden layers,
as in the paper.  Weights start from N(0, 0.02).

``blocks`` > 0 adds that many stride-1 3x3 convolution layers at every scale of both networks (after the
projection and each up-sampling in the generator, after each down-sampling in the discriminator): more
depth and a wider receptive field at the same sides, still all-convolutional (``gan fit``'s DCGAN default is
one block at width 32: BENCHMARKS.md).

A class-conditional DCGAN (``num_classes > 0``) feeds the one-hot label to the generator beside z,
and to the discriminator as K constant image planes beside the image (Mirza & Osindero 2014).

All images are in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn


def dcgan_plan(size: int) -> tuple[int, int]:
    """(n, s0): how many stride-2 stages and the base side, for a square side ``size``."""
    s0, n = int(size), 0
    while s0 % 2 == 0 and s0 // 2 >= 4:
        s0 //= 2
        n += 1
    if n < 2:
        raise ValueError(f"image size {size} is not a multiple of 4 of at least 16")
    return n, s0


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(w, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _g_blocks(c: int, blocks: int) -> list[nn.Module]:
    """``blocks`` x (3x3 stride-1 conv, batch norm, ReLU): (N, c, s, s) -> (N, c, s, s)."""
    out: list[nn.Module] = []
    for _ in range(blocks):
        out += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
    return out


def _d_blocks(c: int, blocks: int, sn, spectral_norm: bool) -> list[nn.Module]:
    """``blocks`` x (3x3 stride-1 conv, batch norm unless spectral norm, LeakyReLU): (N, c, s, s) -> same."""
    out: list[nn.Module] = []
    for _ in range(blocks):
        out.append(sn(nn.Conv2d(c, c, 3, 1, 1, bias=spectral_norm)))
        if not spectral_norm:
            out.append(nn.BatchNorm2d(c))
        out.append(nn.LeakyReLU(0.2, True))
    return out


class DCGANGenerator(nn.Module):
    """z (N, latent) [+ labels (N,)] -> images (N, channels, size, size) in [-1, 1]."""

    def __init__(self, latent: int = 100, channels: int = 1, size: int = 28, width: int = 64, num_classes: int = 0,
                 blocks: int = 0):
        super().__init__()
        self.latent, self.channels, self.size, self.num_classes = latent, channels, size, num_classes
        n, s0 = dcgan_plan(size)
        c = width * 2 ** (n - 1)
        # (N, latent + K, 1, 1) -> (N, c, s0, s0)
        self.project = nn.Sequential(
            nn.ConvTranspose2d(latent + num_classes, c, s0, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU(True),
            *_g_blocks(c, blocks))
        ups = []
        for _ in range(n - 1):  # (N, c, s, s) -> (N, c/2, 2s, 2s)
            ups += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
            ups += _g_blocks(c, blocks)
        self.up = nn.Sequential(*ups)
        # (N, width, size/2, size/2) -> (N, channels, size, size)
        self.to_image = nn.Sequential(nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh())
        init_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if labels is None:
                raise ValueError("a conditional generator needs labels")
            z = torch.cat([z, nn.functional.one_hot(labels.long(), self.num_classes).to(z.dtype)], dim=1)
        h = self.project(z[:, :, None, None])  # (N, c, s0, s0)
        h = self.up(h)  # (N, width, size/2, size/2)
        return self.to_image(h)  # (N, channels, size, size)


class DCGANDiscriminator(nn.Module):
    """images (N, channels, size, size) [+ labels (N,)] -> logits (N,) (real > 0 > fake)."""

    def __init__(self, channels: int = 1, size: int = 28, width: int = 64, num_classes: int = 0,
                 spectral_norm: bool = False, blocks: int = 0):
        super().__init__()
        self.num_classes, self.size = num_classes, size
        n, s0 = dcgan_plan(size)
        sn = _sn if spectral_norm else (lambda m: m)
        c = width
        # (N, channels + K, size, size) -> (N, width, size/2, size/2); no norm on the first layer
        layers: list[nn.Module] = [sn(nn.Conv2d(channels + num_classes, c, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        layers += _d_blocks(c, blocks, sn, spectral_norm)
        for _ in range(n - 1):  # (N, c, s, s) -> (N, 2c, s/2, s/2)
            layers.append(sn(nn.Conv2d(c, c * 2, 4, 2, 1, bias=spectral_norm)))
            if not spectral_norm:
                layers.append(nn.BatchNorm2d(c * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            c *= 2
            layers += _d_blocks(c, blocks, sn, spectral_norm)
        self.features = nn.Sequential(*layers)
        self.logit = sn(nn.Conv2d(c, 1, s0, 1, 0))  # (N, c, s0, s0) -> (N, 1, 1, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if labels is None:
                raise ValueError("a conditional discriminator needs labels")
            planes = nn.functional.one_hot(labels.long(), self.num_classes).to(x.dtype)  # (N, K)
            x = torch.cat([x, planes[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], dim=1)
        return self.logit(self.features(x)).flatten()  # (N,)


# --------------------------------------------------------------------------- pix2pix


def unet_depth(size: int) -> int:
    """U-Net levels: down to a 1x1 bottleneck (256 -> 8 levels, as in pix2pix), at most 8."""
    return min(8, int(size).bit_length() - 1)


class UNetGenerator(nn.Module):
    """pix2pix's U-Net: (N, in_channels, S, S) in [-1, 1] -> (N, out_channels, S, S) in [-1, 1].

    Encoder level i: Conv 4x4 stride 2 (halves the side) to ``width * min(2^i, 8)`` channels,
    LeakyReLU(0.2) before it and batch norm after it (not on the first level nor the 1x1 bottleneck).
    Decoder level i: ReLU, transposed conv 4x4 stride 2 (doubles the side) on the previous decoder
    output concatenated with encoder level i's output (the skip connection), batch norm, dropout 0.5
    on the three levels next to the bottleneck; tanh at the output.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, size: int = 256, width: int = 64):
        super().__init__()
        self.in_channels, self.out_channels, self.size = in_channels, out_channels, size
        depth = unet_depth(size)
        ch = [width * min(2 ** i, 8) for i in range(depth)]
        self.downs = nn.ModuleList()
        for i in range(depth):  # (N, ch[i-1], s, s) -> (N, ch[i], s/2, s/2)
            conv = nn.Conv2d(in_channels if i == 0 else ch[i - 1], ch[i], 4, 2, 1, bias=i == 0 or i == depth - 1)
            if i == 0:
                self.downs.append(conv)
            elif i == depth - 1:
                self.downs.append(nn.Sequential(nn.LeakyReLU(0.2, True), conv))
            else:
                self.downs.append(nn.Sequential(nn.LeakyReLU(0.2, True), conv, nn.BatchNorm2d(ch[i])))
        self.ups = nn.ModuleList()
        for i in reversed(range(depth)):  # (N, [2*]ch[i], s, s) -> (N, ch[i-1], 2s, 2s)
            cin = ch[i] if i == depth - 1 else 2 * ch[i]
            if i == 0:
                self.ups.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(cin, out_channels, 4, 2, 1), nn.Tanh()))
                continue
            block = [nn.ReLU(True), nn.ConvTranspose2d(cin, ch[i - 1], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i - 1])]
            if depth - 1 - i < 3 and depth >= 5:
                block.append(nn.Dropout(0.5))
            self.ups.append(nn.Sequential(*block))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for down in self.downs:  # sides S/2, S/4, ..., 1 (for S <= 256)
            h = down(h)
            skips.append(h)
        h = self.ups[0](skips[-1])  # the bottleneck, back up one level
        for up, skip in zip(self.ups[1:], reversed(skips[:-1])):
            h = up(torch.cat([h, skip], dim=1))  # (N, 2*ch[i], s, s) -> (N, ch[i-1], 2s, 2s)
        return h  # (N, out_channels, S, S)


def patch_layers(size: int) -> int:
    """PatchGAN depth: 3 stride-2 layers (70x70 receptive field) from 64 px up, fewer for small images."""
    return 3 if size >= 64 else (2 if size >= 32 else 1)


class PatchDiscriminator(nn.Module):
    """PatchGAN: (input (N, Ca, S, S), image (N, Cb, S, S)) -> a map of logits (N, 1, P, P), one per patch.

    C64-C128-C256 stride 2, then C512 stride 1, then a 1-channel stride-1 conv (Isola et al.'s 70x70
    discriminator for ``n_layers`` = 3); batch norm on all but the first layer, LeakyReLU(0.2).
    """

    def __init__(self, in_channels: int = 6, width: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]  # S/2
        c = width
        for i in range(1, n_layers):  # S/2^(i+1)
            c_out = width * min(2 ** i, 8)
            layers += [nn.Conv2d(c, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
            c = c_out
        c_out = width * min(2 ** n_layers, 8)
        layers += [nn.Conv2d(c, c_out, 4, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]  # side - 1
        layers.append(nn.Conv2d(c_out, 1, 4, 1, 1))  # side - 1: (N, 1, P, P)
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, b], dim=1))


def build_generator(config: dict) -> nn.Module:
    """The generator a model config.json describes (the saved network of a GAN model directory)."""
    if config["architecture"] == "dcgan":
        return DCGANGenerator(int(config["latent"]), int(config["channels"]), int(config["image_size"]),
                              int(config["width"]), len(config.get("classes") or []) if config.get("conditional") else 0,
                              int(config.get("blocks", 0)))
    if config["architecture"] == "pix2pix":
        return UNetGenerator(int(config["in_channels"]), int(config["out_channels"]), int(config["image_size"]),
                             int(config["width"]))
    raise ValueError(f"unknown GAN architecture {config['architecture']!r}")
