"""Corruptions for denoising autoencoders; each maps a clean batch in [0, 1] to a noisy one.

The denoising loss compares the network's output with the *clean* batch; these
functions only make its input.  ``level`` means, per kind:

* ``gaussian``: standard deviation of additive noise (result clipped to [0, 1]);
* ``salt-pepper``: fraction of pixels set to 0 or 1 (half each);
* ``mask``: fraction of pixels missing (set to 0, all channels);
* ``bars``: fraction of rows and columns blanked out, in random bars of ~1/8 of the side.
"""

from __future__ import annotations

from typing import Callable

import torch

from transferkit.tasks.autoencoder.config import NOISE_KINDS


def gaussian(x: torch.Tensor, level: float, gen: torch.Generator | None = None) -> torch.Tensor:
    return (x + level * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)).clamp(0, 1)


def salt_pepper(x: torch.Tensor, level: float, gen: torch.Generator | None = None) -> torch.Tensor:
    n, _, h, w = x.shape
    u = torch.rand((n, 1, h, w), generator=gen, device=x.device)  # one draw per pixel, shared by channels
    out = x.clone()
    out = torch.where(u < level / 2, torch.zeros_like(out), out)
    return torch.where((u >= level / 2) & (u < level), torch.ones_like(out), out)


def mask(x: torch.Tensor, level: float, gen: torch.Generator | None = None) -> torch.Tensor:
    n, _, h, w = x.shape
    keep = torch.rand((n, 1, h, w), generator=gen, device=x.device) >= level
    return x * keep


def bars(x: torch.Tensor, level: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Blank random horizontal and vertical bars covering about ``level`` of the rows and of the columns."""
    n, _, h, w = x.shape
    out = x.clone()
    for side, size in ((2, h), (3, w)):
        width = max(1, size // 8)
        n_bars = int(round(level * size / width))
        if n_bars == 0:
            continue
        starts = torch.randint(0, max(1, size - width + 1), (n, n_bars), generator=gen)
        keep = torch.ones((n, size), dtype=torch.bool)
        offsets = torch.arange(width)
        idx = (starts.unsqueeze(-1) + offsets).clamp_max(size - 1).view(n, -1)  # (N, n_bars * width)
        keep.scatter_(1, idx, False)
        keep = keep.to(x.device)
        shape = (n, 1, size, 1) if side == 2 else (n, 1, 1, size)
        out = out * keep.view(shape)
    return out


_FUNCS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian": gaussian,
    "salt-pepper": salt_pepper,
    "mask": mask,
    "bars": bars,
}


def corrupt(x: torch.Tensor, kind: str, level: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Apply noise ``kind`` at ``level`` to a batch (N, C, H, W) in [0, 1]."""
    if kind not in _FUNCS:
        raise ValueError(f"unknown noise kind {kind!r}; use one of {', '.join(NOISE_KINDS)}")
    return _FUNCS[kind](x, level, gen)
