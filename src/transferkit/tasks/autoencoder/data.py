"""Image arrays for autoencoders: reading DATA, float tensors, seeded splits that eval can find again.

DATA is ``digits`` (embedded), an MNIST IDX folder, or an image folder (class
subfolders, if any, become labels).  A run records where its data came from
and which rows it held out (``split.json``), so that ``eval`` / ``finetune``
on the same DATA use exactly the held-out rows, never the training ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit.core.datasets import ArrayData, load_arrays, stratified_split
from transferkit.core.modeldir import atomic_write_text
from transferkit.errors import ImageReadError, TransferkitError

SPLIT_FILE = "split.json"


def source_id(data: str | os.PathLike | ArrayData) -> str:
    """A stable name for DATA: ``digits``, or the absolute path; arrays keep their own ``source``."""
    if isinstance(data, ArrayData):
        return data.source
    text = os.fspath(data)
    return text if text == "digits" else str(Path(text).resolve())


def read_data(data: str | os.PathLike | ArrayData, size: Sequence[int] = (32, 32), grayscale: bool = False) -> ArrayData:
    """Read DATA as uint8 arrays; an empty result is an error naming DATA."""
    if isinstance(data, ArrayData):
        arrays = data
    else:
        arrays = load_arrays(data, size=(int(size[0]), int(size[1])), grayscale=grayscale)
    if len(arrays) == 0:
        raise TransferkitError(f"No images in {source_id(data)}.")
    return arrays


def to_float(images: np.ndarray):
    """uint8 (N, H, W) or (N, H, W, C) -> float32 tensor (N, C, H, W) in [0, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def to_uint8(x) -> np.ndarray:
    """float tensor/array (N, C, H, W) in [0, 1] -> uint8 (N, H, W) grey or (N, H, W, 3)."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    return arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)


def grey_of(x):
    """Colour batch (N, 3, H, W) -> its luma (N, 1, H, W), as Pillow's convert('L') computes it."""
    from transferkit.tasks.autoencoder.models import match_channels

    return match_channels(x, 1)


# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Row indices of DATA used for training and held out."""

    train: list[int]
    held_out: list[int]
    source: str
    n: int


def make_split(data: ArrayData, val_fraction: float, seed: int, max_images: int | None = None) -> Split:
    """Seeded split (stratified when there are labels); ``max_images`` first takes a seeded subset."""
    n = len(data)
    rows = np.arange(n)
    if max_images is not None and max_images < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
    if val_fraction <= 0:
        return Split(rows.tolist(), [], data.source, n)
    if len(rows) < 2:
        raise TransferkitError(f"{data.source} has {len(rows)} image(s); at least 2 are needed to hold some out.")
    if data.labels is not None:
        tr, va = stratified_split(data.labels[rows], val_fraction, seed)
    else:
        perm = np.random.default_rng(seed).permutation(len(rows))
        n_val = min(max(1, int(round(len(rows) * val_fraction))), len(rows) - 1)
        va, tr = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())
    return Split(rows[tr].tolist(), rows[va].tolist(), data.source, n)


def save_split(split: Split, run_dir: str | os.PathLike, source: str) -> None:
    atomic_write_text(Path(run_dir) / SPLIT_FILE, json.dumps(
        {"source": source, "n": split.n, "held_out": split.held_out, "n_train": len(split.train)}))


def held_out_rows(run_dir: str | os.PathLike, data: str | os.PathLike | ArrayData, n: int) -> list[int] | None:
    """The rows ``run_dir`` held out if DATA is the data it trained on, else None (use all of DATA)."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("source") != source_id(data) or int(info.get("n", -1)) != n:
        return None
    return [int(i) for i in info.get("held_out", [])] or None


# --------------------------------------------------------------------------- single files


def read_files(paths: Sequence[str | os.PathLike], size: Sequence[int], channels: int, strict: bool = False):
    """Read image files as the training data was read: (N, H, W) grey or (N, H, W, 3), and the names kept.

    Unreadable files are skipped with a warning (an error with ``strict``).
    """
    from PIL import Image

    from transferkit.core.images import SkipLog, read_image

    skips = SkipLog(strict=strict)
    out, names = [], []
    for p in paths:
        try:
            img = read_image(p)
        except ImageReadError as err:
            skips.add(err)
            continue
        img = img.convert("L") if channels == 1 else img
        out.append(np.asarray(img.resize((int(size[1]), int(size[0])), Image.BILINEAR), dtype=np.uint8))
        names.append(os.fspath(p))
    if not out:
        raise TransferkitError("None of the given images could be read.")
    return np.stack(out), names
