"""Data for GANs: unpaired images for DCGAN, (input, target) pairs for pix2pix.

DCGAN DATA: an MNIST IDX folder (with its labels), an Omniglot ``.zip`` (or a folder of them), or an
image folder (class subfolders become labels for ``--conditional``), resized to the square training
side.  pix2pix DATA: ``A/`` and ``B/`` folders with matching file names, or a folder of side-by-side
A|B images (the pix2pix data sets' format), or with ``--edges`` any folder of photos, paired with
their Canny edges (black lines on white, like a drawing).

Arrays are uint8, (N, H, W) grey or (N, H, W, 3) colour; :func:`to_tensor` makes them (N, C, H, W)
floats in [-1, 1], the range the networks work in.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from transferkit.core.datasets import ArrayData
from transferkit.errors import ImageReadError, TransferkitError


def to_tensor(images: np.ndarray):
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def to_uint8(x) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W) grey or (N, H, W, 3)."""
    arr = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    arr = np.clip(np.round((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)


def resize_arrays(images: np.ndarray, size: int) -> np.ndarray:
    """Square-resize uint8 images (bilinear; area when shrinking a lot)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
    return np.stack(out).astype(np.uint8)


def is_mnist(data: str | os.PathLike) -> bool:
    from transferkit.core.datasets import _find_idx

    p = Path(os.fspath(data))
    return p.is_dir() and bool(_find_idx(p, "images"))


def read_unpaired(data: str | os.PathLike | ArrayData, size: int, grayscale: bool = False) -> ArrayData:
    """DCGAN training images at ``size`` x ``size``: MNIST IDX folder, Omniglot zip(s), or an image folder."""
    from transferkit.core.datasets import load_arrays, load_omniglot

    if isinstance(data, ArrayData):
        arrays = data
    else:
        text = os.fspath(data)
        path = Path(text)
        if not path.exists():
            raise TransferkitError(f"No such file or folder: {text}")
        if path.is_file() and path.suffix.lower() == ".zip" or (path.is_dir() and not is_mnist(path)
                                                                  and any(path.glob("*.zip"))):
            om = load_omniglot(path, size=size)
            arrays = ArrayData(om.images, om.labels, om.classes, f"omniglot:{path}")
        elif path.is_file():
            raise TransferkitError(f"{text} is a file; DATA must be an image folder, an MNIST IDX folder or an "
                                   "Omniglot .zip.")
        else:
            arrays = load_arrays(path, size=(size, size), grayscale=grayscale)
    if len(arrays) < 2:
        raise TransferkitError(f"{arrays.source} has {len(arrays)} image(s); a GAN needs at least 2.")
    if arrays.images.shape[1:3] != (size, size):
        arrays = ArrayData(resize_arrays(arrays.images, size), arrays.labels, arrays.classes, arrays.source)
    return arrays


# --------------------------------------------------------------------------- pix2pix pairs


@dataclass
class PairData:
    """Aligned (input, target) images, uint8 (N, S, S[, 3]) each, and where each pair came from."""

    a: np.ndarray
    b: np.ndarray
    names: list[str]
    source: str
    layout: str  # "A/B folders", "side-by-side", "edges"

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, idx: Sequence[int]) -> "PairData":
        idx = np.asarray(idx, dtype=int)
        return PairData(self.a[idx], self.b[idx], [self.names[i] for i in idx], self.source, self.layout)


def canny_edges(image: np.ndarray) -> np.ndarray:
    """Edges of a uint8 photo (H, W[, 3]) as a drawing: black lines (0) on white (255), (H, W) uint8.

    OpenCV Canny on the slightly blurred grey image, thresholds from the median intensity
    (0.66x and 1.33x of it, the usual automatic choice).
    """
    import cv2

    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (3, 3), 0)
    med = float(np.median(grey))
    lo, hi = int(max(0, 0.66 * med)), int(min(255, 1.33 * med))
    edges = cv2.Canny(grey, lo, max(hi, lo + 1))
    return (255 - edges).astype(np.uint8)


def _read_rgb(path: Path, skips) -> np.ndarray | None:
    from transferkit.core.images import read_image

    try:
        return np.asarray(read_image(path).convert("RGB"), dtype=np.uint8)
    except ImageReadError as err:
        skips.add(err)
        return None


def _sample(items: list, max_images: int | None, seed: int) -> list:
    """``items``, or a seeded random ``max_images`` of them in their order when there are more."""
    if max_images is not None and len(items) > max_images:
        rng = np.random.default_rng(seed)
        items = [items[i] for i in sorted(rng.choice(len(items), max_images, replace=False))]
    return items


def _readable_sample(root: Path, max_images: int | None, seed: int, skips) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, RGB uint8 array) of the images under ``root`` (a :func:`_sample` of them), unreadable ones sent to ``skips``."""
    from transferkit.core.images import list_images

    for p in _sample(list_images([root]), max_images, seed):
        img = _read_rgb(p, skips)
        if img is not None:
            yield p, img


def _square(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def split_side_by_side(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An A|B image (W = 2 x the width of each half) -> (A = left half, B = right half)."""
    w = img.shape[1]
    if w < 2:
        raise TransferkitError("A side-by-side A|B image must be at least 2 pixels wide.")
    half = w // 2
    return img[:, :half], img[:, half : 2 * half]


def _grey_if_flat(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) whose three channels are equal everywhere -> (N, S, S) grey."""
    if images.ndim == 4 and np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2]):
        return images[..., 0].copy()
    return images


def read_pairs(data: str | os.PathLike, size: int, edges: bool = False, direction: str = "AtoB",
               max_images: int | None = None, seed: int = 0) -> PairData:
    """pix2pix pairs at ``size`` x ``size`` in the training direction (``a`` is the input, ``b`` the target)."""
    from transferkit.core.images import SkipLog, list_images

    root = Path(os.fspath(data))
    if not root.is_dir():
        raise TransferkitError(f"No such folder: {root} (pix2pix DATA is a folder: A/ and B/, side-by-side A|B "
                               "images, or photos with --edges).")
    skips = SkipLog()
    a_list, b_list, names = [], [], []
    if edges:
        for p, img in _readable_sample(root, max_images, seed, skips):
            photo = _square(img, size)
            a_list.append(canny_edges(photo))
            b_list.append(photo)
            names.append(str(p.relative_to(root)))
        layout = "edges"
    elif (root / "A").is_dir() and (root / "B").is_dir():
        a_files = {p.relative_to(root / "A").with_suffix("").as_posix(): p for p in list_images([root / "A"])}
        b_files = {p.relative_to(root / "B").with_suffix("").as_posix(): p for p in list_images([root / "B"])}
        common = sorted(set(a_files) & set(b_files))
        if not common:
            raise TransferkitError(f"No file names in {root / 'A'} match those in {root / 'B'}; pairs need the same name "
                                   "(extension aside) in both folders.")
        lonely = len(a_files) + len(b_files) - 2 * len(common)
        if lonely:
            print(f"warning: {lonely} file(s) in {root}/A or {root}/B have no partner and are ignored", file=sys.stderr)
        for key in _sample(common, max_images, seed):
            ia, ib = _read_rgb(a_files[key], skips), _read_rgb(b_files[key], skips)
            if ia is None or ib is None:
                continue
            a_list.append(_square(ia, size))
            b_list.append(_square(ib, size))
            names.append(key)
        layout = "A/B folders"
    else:
        for p, img in _readable_sample(root, max_images, seed, skips):
            if img.shape[1] < 1.5 * img.shape[0]:
                raise TransferkitError(
                    f"{p} is not a side-by-side A|B image (it is {img.shape[1]}x{img.shape[0]}, not about twice as wide "
                    "as high); give A/ and B/ folders, side-by-side images, or photos with --edges.")
            ia, ib = split_side_by_side(img)
            a_list.append(_square(ia, size))
            b_list.append(_square(ib, size))
            names.append(str(p.relative_to(root)))
        layout = "side-by-side"
    if len(a_list) < 2:
        raise TransferkitError(f"{root} gives {len(a_list)} usable pair(s); pix2pix needs at least 2.")
    a, b = _grey_if_flat(np.stack(a_list)), _grey_if_flat(np.stack(b_list))
    if direction == "BtoA":
        a, b = b, a
    return PairData(a, b, names, str(root.resolve()), layout)


def jitter_pair(a, b, size: int, generator=None):
    """pix2pix's random jitter and mirroring, the same for input and target: resize (N, C, S, S) to
    1.12 S (286 for 256), crop a random S x S window, flip left-right with probability 1/2 (per batch)."""
    import torch
    import torch.nn.functional as F

    big = int(round(size * 286 / 256))
    if big > size:
        a = F.interpolate(a, size=(big, big), mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=(big, big), mode="bilinear", align_corners=False)
        i, j = (int(v) for v in torch.randint(0, big - size + 1, (2,), generator=generator))
        a, b = a[:, :, i : i + size, j : j + size], b[:, :, i : i + size, j : j + size]
    if bool(torch.rand((), generator=generator) < 0.5):
        a, b = a.flip(-1), b.flip(-1)
    return a.contiguous(), b.contiguous()


def split_rows(n: int, val_fraction: float, seed: int, max_images: int | None = None) -> tuple[list[int], list[int]]:
    """Seeded (training rows, held-out rows)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if max_images is not None:
        order = order[:max_images]
    k = int(round(len(order) * val_fraction))
    if val_fraction > 0 and k == 0 and len(order) >= 4:
        k = 1
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def diff_augment(x, generator=None):
    """Differentiable random translation (Zhao et al. 2020, DiffAugment's "translation"): each image of
    (N, C, S, S) is shifted by a whole number of pixels, up to S/8 in each direction, edges repeated.

    Applied to real and generated images alike, before the discriminator, in both networks' steps: the
    discriminator then cannot memorise a small training set's exact pixels, and the generator's gradient
    flows through the shift (a gather of pixels), so it still learns un-shifted images."""
    import torch

    n, _, h, w = x.shape
    r = max(1, h // 8)
    shift = torch.randint(-r, r + 1, (n, 2, 1, 1), generator=generator).to(x.device)  # (N, 2, 1, 1): dy, dx
    rows = (torch.arange(h, device=x.device)[None, :, None] + shift[:, 0]).clamp(0, h - 1)  # (N, H, 1)
    cols = (torch.arange(w, device=x.device)[None, None, :] + shift[:, 1]).clamp(0, w - 1)  # (N, 1, W)
    index = (rows * w + cols).flatten(1)  # (N, H*W): where each output pixel comes from
    flat = x.flatten(2)  # (N, C, H*W)
    return flat.gather(2, index[:, None, :].expand(-1, x.shape[1], -1)).view_as(x)
