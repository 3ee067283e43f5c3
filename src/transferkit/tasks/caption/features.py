"""The CNN side: building the image encoder, and its features of many images through the feature cache.

Features are computed once per (backbone weights, preprocessing, layer, image
content) by :mod:`transferkit.core.featcache`: a second ``caption fit`` on
the same photos (another decoder, attention on or off, tied or not) starts
training at once.  ``pooled`` rows are (F,) vectors; ``grid`` rows are (F, G*G)
maps for soft attention.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from transferkit.errors import TransferkitError


def create_image_encoder(name: str, weights: str = "pretrained", image_size: Optional[int] = None, grid: int = 7):
    """(ImageEncoder, Preprocessing, architecture name) for a timm backbone or registered weights.

    ``weights``: ``pretrained`` (resolved offline first), ``none`` (random
    initialisation, for tests) or a weights file.
    """
    from transferkit.core.registry import create_encoder
    from transferkit.tasks.caption.model import ImageEncoder

    w: Any = None if str(weights).lower() in ("none", "random", "scratch") else weights
    module, pre = create_encoder(name, weights=w)
    if pre is None or not hasattr(module, "forward_features"):
        raise TransferkitError(f"--encoder {name} is not a pretrained (timm) backbone; caption needs one, e.g. efficientnet_lite0.")
    if image_size:
        pre = dataclasses.replace(pre, input_size=(pre.input_size[0], image_size, image_size))
    arch = str((getattr(module, "pretrained_cfg", None) or {}).get("architecture") or name.removeprefix("timm/").split(".")[0])
    return ImageEncoder(module.eval(), grid), pre, arch


def encoder_model(encoder: Any, architecture: str, preprocessing: Any):
    """The encoder as a :class:`~transferkit.core.modeldir.TransferModel` (what the feature cache keys on)."""
    from transferkit.core.modeldir import TransferModel

    return TransferModel(encoder, {"task": "pretrained", "architecture": architecture,
                                   "preprocessing": preprocessing.to_dict()})


def cached_features(paths: Sequence[Any], encoder: Any, architecture: str, preprocessing: Any, layer: str,
                    cache: bool = True, device: str = "auto", skips: Any = None):
    """Features of ``paths``: ``pooled`` (n, F) or ``grid`` (n, F, G*G); returns the CachedFeatures."""
    from transferkit.core.featcache import extract_cached

    model = encoder_model(encoder, architecture, preprocessing)
    extra = {"grid": encoder.grid} if layer == "grid" else None
    # the ONNX exporter cannot express adaptive pooling to an arbitrary grid: the grid runs on torch
    return extract_cached(list(paths), model, layer=layer, cache=cache, device=device, skips=skips, batch_size=32,
                          extra_key=extra, desc=f"encoder features ({layer})", engine="torch" if layer == "grid" else "auto")


def as_array(rows: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(rows, dtype=np.float32))
