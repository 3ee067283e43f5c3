"""Image grids and PNG files for GAN samples (no matplotlib: exact pixels, enlarged by whole factors)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def grid(images: np.ndarray, ncols: int = 8, pad: int = 2, scale: int = 1, background: int = 255) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, 3) -> one uint8 picture with ``ncols`` per row, ``pad`` px apart."""
    images = np.asarray(images)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    h, w = images.shape[1:3]
    shape = (nrows * (h + pad) + pad, ncols * (w + pad) + pad) + images.shape[3:]
    out = np.full(shape, background, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return out


def auto_scale(side: int) -> int:
    """Enlargement that makes small samples visible (28 px -> x3, 64 px -> x1)."""
    return max(1, 96 // max(1, side))


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    from transferkit.core.modeldir import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, png_bytes(image))


def as_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grey -> (N, H, W, 3); colour unchanged."""
    return np.repeat(images[..., None], 3, axis=-1) if images.ndim == 3 else images


def triplets(inputs: np.ndarray, outputs: np.ndarray, targets: np.ndarray | None = None, scale: int = 1) -> np.ndarray:
    """input | output | target rows (pix2pix), one row per pair."""
    cols: list[np.ndarray] = [as_rgb(inputs), as_rgb(outputs)]
    if targets is not None:
        cols.append(as_rgb(targets))
    rows = np.stack(cols, axis=1).reshape(-1, *cols[0].shape[1:])
    return grid(rows, ncols=len(cols), scale=scale)


def labelled_rows(images: np.ndarray, ncols: int, scale: int = 1) -> np.ndarray:
    return grid(images, ncols=ncols, scale=scale)


def interpolation_strip(images: Sequence[np.ndarray], scale: int = 1) -> np.ndarray:
    arr = np.stack(list(images))
    return grid(arr, ncols=len(arr), scale=scale)
