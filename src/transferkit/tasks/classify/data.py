"""Training data for the classifier: decode each image once, keep it in memory, augment on the fly.

Decoding a JPEG photo costs far more than augmenting a small uint8 tensor,
and a transfer-learning set of a few hundred images fits in memory many times
over.  So every image is decoded once (JPEG draft mode, EXIF, modes handled by
``core.images``), resized with the weights' own filter so its short side is
the preprocessing's resize size (256 for a 224 input at crop 0.875), and kept
as a ``uint8`` tensor (C, H, W).  Validation then needs only the centre crop,
which gives exactly what the weights' eval transform (and so ``transferkit
predict``) feeds the network; training augments from the same tensors.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from transferkit.core.images import SkipLog, read_image
from transferkit.errors import ImageReadError, TransferkitError


class _Decode(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], short_side: int, interpolation: str):
        self.paths, self.short_side, self.interpolation = list(paths), short_side, interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import numpy as np

        try:
            img = read_image(self.paths[i], draft_size=(self.short_side, self.short_side))
        except ImageReadError as err:
            return i, None, err
        img = resize_short(img, self.short_side, self.interpolation)
        arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()  # (3, H, W)
        return i, arr, None


def _as_list(batch: list) -> list:
    return batch


def resize_short(img: Any, short_side: int, interpolation: str = "bicubic") -> Any:
    """Resize a PIL image so its short side is exactly ``short_side`` (as torchvision/timm ``Resize(int)`` do)."""
    from PIL import Image

    w, h = img.size
    if min(w, h) == short_side:
        return img
    if w <= h:
        nw, nh = short_side, int(short_side * h / w)
    else:
        nh, nw = short_side, int(short_side * w / h)
    filt = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}.get(interpolation, Image.BICUBIC)
    return img.resize((nw, nh), filt)


def decode_all(paths: Sequence[Path], short_side: int, interpolation: str, skips: SkipLog,
               workers: int | None = None, desc: str = "decode") -> tuple[list[torch.Tensor], list[int]]:
    """Decode ``paths`` to uint8 tensors (short side ``short_side``); returns (tensors, indices that worked)."""
    from transferkit.core.progress import Progress

    ds = _Decode(paths, short_side, interpolation)
    n_workers = workers if workers is not None else (0 if len(paths) < 64 else 2)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=n_workers, collate_fn=_as_list)
    out: dict[int, torch.Tensor] = {}
    with Progress(len(paths), desc, unit="img") as bar:
        for batch in loader:
            for i, arr, err in batch:
                if err is not None:
                    skips.add(err)
                else:
                    out[i] = arr
            bar.update(len(batch))
    ok = sorted(out)
    return [out[i] for i in ok], ok


class FileImages(torch.utils.data.Dataset):
    """Images read from disk at every access (``--no-cache-images``): slower, for sets that do not fit in memory."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Any, short_side: int, interpolation: str):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform
        self.short_side, self.interpolation = short_side, interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = read_image(self.paths[i], draft_size=(self.short_side, self.short_side))
        img = resize_short(img, self.short_side, self.interpolation)
        return self.transform(img), self.labels[i]


class MemoryImages(torch.utils.data.Dataset):
    """Decoded uint8 tensors and labels; ``transform`` (augmentation or centre crop) runs at every access."""

    def __init__(self, images: Sequence[torch.Tensor], labels: Sequence[int], transform: Any):
        self.images, self.labels, self.transform = list(images), list(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


@dataclass
class Prepared:
    """Training and validation datasets with the files and labels they hold (unreadable files dropped)."""

    train: Any
    val: Any
    train_paths: list[Path]
    train_labels: list[int]
    val_paths: list[Path]
    val_labels: list[int]
    val_images: list[torch.Tensor] | None  # the decoded validation images (for the report's picture grid)
    decode_seconds: float


def prepare(split: Any, train_tf: Any, val_tf: Any, short_side: int, interpolation: str, in_memory: bool = True,
            skips: SkipLog | None = None) -> Prepared:
    """Datasets for a :class:`~transferkit.core.datasets.LabelledSplit`."""
    import time

    skips = skips or SkipLog()
    t0 = time.perf_counter()
    if in_memory:
        tr_imgs, tr_ok = decode_all(split.train.paths, short_side, interpolation, skips, desc="decode train")
        va_imgs, va_ok = decode_all(split.val.paths, short_side, interpolation, skips, desc="decode val")
    else:
        tr_ok = _readable(split.train.paths, skips)
        va_ok = _readable(split.val.paths, skips)
        tr_imgs = va_imgs = None
    if skips.summary():
        print(f"warning: {skips.summary()}", file=sys.stderr)
    tr_paths = [split.train.paths[i] for i in tr_ok]
    tr_labels = [split.train.labels[i] for i in tr_ok]
    va_paths = [split.val.paths[i] for i in va_ok]
    va_labels = [split.val.labels[i] for i in va_ok]
    if not tr_paths or not va_paths:
        raise TransferkitError("No readable images left in the training or the validation part.")
    if in_memory:
        train = MemoryImages(tr_imgs, tr_labels, train_tf)
        val = MemoryImages(va_imgs, va_labels, val_tf)
    else:
        train = FileImages(tr_paths, tr_labels, train_tf, short_side, interpolation)
        val = FileImages(va_paths, va_labels, val_tf, short_side, interpolation)
    return Prepared(train, val, tr_paths, tr_labels, va_paths, va_labels, va_imgs, time.perf_counter() - t0)


def _readable(paths: Sequence[Path], skips: SkipLog) -> list[int]:
    from PIL import Image

    ok = []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im.verify()
            ok.append(i)
        except Exception as err:  # noqa: BLE001 - reported as a skipped file
            skips.add(ImageReadError(p, f"unreadable image ({err})"))
    return ok
