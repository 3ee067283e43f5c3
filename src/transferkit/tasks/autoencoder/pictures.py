"""Pictures of an autoencoder: originals vs reconstructions, the 2-D latent plane, one decoded point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.core.report import image_grid, plt


def _show(arr: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> float in [0, 1] for image_grid."""
    return arr.astype(np.float32) / 255.0


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, noisy: np.ndarray | None = None,
                        inputs_grey: np.ndarray | None = None, n: int = 10):
    """Rows: originals, (noisy inputs or grey inputs), reconstructions; ``n`` columns. Arrays uint8."""
    n = min(n, len(originals))
    rows: list[tuple[str, np.ndarray]] = [("original", originals)]
    if noisy is not None:
        rows.append(("noisy input", noisy))
    if inputs_grey is not None:
        rows.append(("grey input", inputs_grey))
    rows.append(("reconstruction", reconstructions))
    images, titles = [], []
    for label, arr in rows:
        for i in range(n):
            images.append(_show(arr[i]))
            titles.append(label if i == 0 else "")
    return image_grid(images, titles, ncols=n, size=1.1)


def latent_scatter(codes: np.ndarray, labels: np.ndarray | None, classes: Sequence[str]):
    """Scatter of 2-D codes coloured by label (one colour per class, with a legend)."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.2, 5.4))
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=4, alpha=0.6)
    else:
        cmap = pyplot.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for c in np.unique(labels):
            m = labels == c
            name = classes[int(c)] if int(c) < len(classes) else str(c)
            ax.scatter(codes[m, 0], codes[m, 1], s=4, alpha=0.6, color=cmap(int(c) % cmap.N), label=name)
        ax.legend(markerscale=3, fontsize=8, loc="best", ncols=2 if len(classes) > 6 else 1)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("codes of held-out images")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plane_limits(codes: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis percentile range of the codes (where the data lives)."""
    return np.percentile(codes, lo, axis=0), np.percentile(codes, hi, axis=0)


def decode_points(module: Any, z: np.ndarray, batch: int = 256) -> np.ndarray:
    """Decode codes (M, latent) -> uint8 images (M, H, W) or (M, H, W, 3)."""
    import torch

    from transferkit.tasks.autoencoder.data import to_uint8

    outs = []
    with torch.inference_mode():
        for i in range(0, len(z), batch):
            outs.append(to_uint8(module.decode(torch.as_tensor(z[i:i + batch], dtype=torch.float32))))
    return np.concatenate(outs)


def latent_manifold(module: Any, lower: Sequence[float], upper: Sequence[float], n: int = 15):
    """A figure tiling images decoded on an n x n grid across the latent plane (z[0] right, z[1] up)."""
    xs = np.linspace(lower[0], upper[0], n)
    ys = np.linspace(upper[1], lower[1], n)  # top row = largest z[1]
    grid = np.array([[x, y] for y in ys for x in xs], dtype=np.float32)
    imgs = decode_points(module, grid)  # (n*n, H, W[, 3])
    h, w = imgs.shape[1:3]
    tile = imgs.reshape(n, n, h, w, *imgs.shape[3:]).swapaxes(1, 2).reshape(n * h, n * w, *imgs.shape[3:])
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 6.4 * h / w))
    ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ticks = list(range(0, n, max(1, n // 5)))  # label a few cells with their code value
    ax.set_xticks([i * w + (w - 1) / 2 for i in ticks], [f"{xs[i]:.2g}" for i in ticks])
    ax.set_yticks([i * h + (h - 1) / 2 for i in ticks], [f"{ys[i]:.2g}" for i in ticks])
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("images decoded across the latent plane")
    fig.tight_layout()
    return fig


def save_png(image: np.ndarray, path: str | os.PathLike, scale: int = 1) -> Path:
    """Write one uint8 image (H, W) or (H, W, 3) as PNG, atomically; ``scale`` enlarges it (nearest)."""
    import io

    from PIL import Image

    from transferkit.core.modeldir import atomic_write_bytes

    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
