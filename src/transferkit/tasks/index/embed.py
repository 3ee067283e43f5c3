"""Embeddings for the similarity index: a pretrained backbone or an autoencoder's codes, of files or arrays.

Files go through :func:`transferkit.core.featcache.extract_cached` (ONNX
Runtime on CPU, an on-disk cache keyed by model and file content, so a query
that is already indexed gets exactly its indexed vector).  Arrays (``digits``,
MNIST) are turned into in-memory images and fed through the same model
preprocessing and :class:`~transferkit.core.inference.Runner`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.errors import TransferkitError


def is_array_data(text: str) -> bool:
    """True for ``digits`` or an MNIST IDX folder (data without files to point at)."""
    if text == "digits":
        return True
    p = Path(text)
    return p.is_dir() and any(p.glob("*-images-idx*-ubyte*")) or (p.is_dir() and any(p.glob("*images.idx*-ubyte*")))


def load_model(model: str | os.PathLike) -> tuple[Any, str, str]:
    """(TransferModel, kind, identity) for a backbone name or an autoencoder run/model directory.

    ``kind`` is ``backbone`` or ``autoencoder``; ``identity`` is what the index
    records to load the same model again (the name, or the absolute model folder).
    """
    from transferkit.api import load
    from transferkit.core.modeldir import find_model_dir

    found = find_model_dir(model)
    tm = load(model)
    if found is not None:
        if tm.task == "autoencoder" and tm.config.get("architecture") in ("dense", "conv"):
            return tm, "autoencoder", str(found.resolve())
        return tm, tm.task, str(found.resolve())
    return tm, "backbone", os.fspath(model)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


@dataclass
class Embedded:
    """Raw (not normalised) embeddings with the names of the items that worked."""

    features: np.ndarray
    names: list[str]
    skipped: list[str] = field(default_factory=list)


def embed_files(paths: Sequence[str | os.PathLike], tm: Any, batch_size: int = 32, engine: str = "auto",
                strict: bool = False, cache: bool = True) -> Embedded:
    """Embeddings of image files (unreadable ones skipped with a warning, or an error with ``strict``)."""
    from transferkit.core.featcache import extract_cached
    from transferkit.core.images import SkipLog

    skips = SkipLog(strict=strict)
    res = extract_cached(list(paths), tm, layer="pre_logits", batch_size=batch_size, engine=engine, cache=cache,
                         desc="embeddings", skips=skips)
    return Embedded(res.features, [os.fspath(paths[i]) for i in res.ok], [e.path for e in res.skipped])


def embed_arrays(images: np.ndarray, names: Sequence[str], tm: Any, batch_size: int = 64, engine: str = "auto") -> Embedded:
    """Embeddings of uint8 images (N, H, W) or (N, H, W, 3), through the model's own preprocessing."""
    from PIL import Image

    from transferkit.core.inference import OutputHead, Runner, iter_batches
    from transferkit.core.progress import Progress

    pre = tm.preprocessing
    items = [(str(n), Image.fromarray(img).convert("RGB")) for n, img in zip(names, images)]
    runner = Runner(OutputHead.make(tm.module, "pre_logits"), pre.input_size, engine=engine)
    rows, kept = [], []
    with Progress(len(items), "embeddings", unit="img") as bar:
        for idx, batch in iter_batches(items, tm.transform(), batch_size, 0):
            rows.append(runner(batch))
            kept.extend(items[i][0] for i in idx)
            bar.update(len(idx))
    if not rows:
        raise TransferkitError("No images to embed.")
    return Embedded(np.concatenate(rows).astype(np.float32), kept)
