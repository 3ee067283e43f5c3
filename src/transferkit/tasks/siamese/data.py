"""Data for Siamese training and one-shot evaluation: images in memory, class-balanced batches, Koch's distortions.

* :func:`load_image_set` reads DATA (a folder with one subfolder per class,
  or the Omniglot layout ``alphabet/character/*.png`` from a folder or the
  official ``.zip`` files) into one uint8 array at the model's input size;
  drawings can first be cropped to their ink (:func:`crop_to_ink`), so that
  where on the page and how large a character was drawn no longer matters.
* :class:`ClassBatchSampler` draws each batch as ``P`` classes x ``K``
  images, so every batch holds same-class pairs for the losses and miners;
  rotated or mirrored copies of a class (``--rotations``, ``--mirror``)
  never share a batch with the class itself (a symmetric character rotated
  by 180 degrees is the same picture, and must not become its own negative).
* :func:`balanced_pairs`: equal numbers of same and different pairs from a
  batch, never an image with itself.
* :func:`random_affine`: Koch et al.'s distortions (rotation, shear, scale,
  translation, each component on with probability ``p``) plus an optional
  smooth elastic displacement, applied to a whole batch at once with one
  ``grid_sample`` call; :func:`affine_thetas` / :func:`apply_affine` give
  the fixed, seeded distortions of test-time augmentation.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from transferkit.core.images import INK_MARGIN, InkCrop, crop_to_ink  # noqa: F401  (re-exported: moved to core)
from transferkit.errors import ImageReadError, TransferkitError

GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"})


# --------------------------------------------------------------------------- reading


@dataclass
class ImageSet:
    """Labelled images in memory.

    Attributes:
        images: uint8 (N, H, W) grey or (N, H, W, 3) colour.
        labels: int64 (N,) indexing ``classes``.
        classes: class names (``alphabet/character`` for Omniglot).
        kind: ``omniglot`` or ``folders``.
        names: a short name per image (its file, or ``class#k`` inside a zip).
        source: where it was read from.
        ink_cropped: whether each image was cropped to its ink (:func:`crop_to_ink`).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    kind: str
    names: list[str] = field(default_factory=list)
    source: str = ""
    ink_cropped: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def grey(self) -> bool:
        return self.images.ndim == 3

    def group_of(self, cls: str) -> str | None:
        """The alphabet of an Omniglot class (``Greek/character03`` -> ``Greek``), else None."""
        return cls.split("/", 1)[0] if self.kind == "omniglot" and "/" in cls else None

    def subset_classes(self, keep: Sequence[int]) -> "ImageSet":
        """Only the classes ``keep`` (indices), relabelled 0..len(keep)-1 in that order."""
        keep = list(keep)
        remap = {c: i for i, c in enumerate(keep)}
        mask = np.isin(self.labels, keep)
        idx = np.flatnonzero(mask)
        return ImageSet(
            self.images[idx], np.asarray([remap[int(c)] for c in self.labels[idx]], dtype=np.int64),
            [self.classes[c] for c in keep], self.kind, [self.names[i] for i in idx] if self.names else [], self.source,
            self.ink_cropped,
        )

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


def _is_omniglot_folder(path: Path) -> bool:
    """``alphabet/character/*.png``: every top-level folder holds only folders, and those hold images."""
    tops = [d for d in path.iterdir() if not d.name.startswith(".")]
    dirs = [d for d in tops if d.is_dir()]
    if not dirs or len(dirs) != len(tops):
        return not dirs and any(p.suffix.lower() == ".zip" for p in tops)
    for d in dirs[:5]:
        kids = [k for k in d.iterdir() if not k.name.startswith(".")]
        if not kids or any(not k.is_dir() for k in kids):
            return False
        if not any(p.suffix.lower() == ".png" for p in kids[0].iterdir()):
            return False
    return True


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def to_array(img: Any, size: int, grey: bool, ink: bool = False) -> np.ndarray:
    """A PIL image as uint8 (size, size) grey or (size, size, 3) RGB, squashed to a square (bilinear).

    ``ink``: grey images are first cropped to their ink (:func:`crop_to_ink`).
    """
    from transferkit.core.images import to_rgb

    if grey:
        img = img.convert("L") if img.mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK") else to_rgb(img).convert("L")
    else:
        img = to_rgb(img)
    arr = np.asarray(img, dtype=np.uint8)
    if ink and grey:
        arr = crop_to_ink(arr)
    return _resize(arr, size)


def read_images(paths: Sequence[str | os.PathLike], size: int, grey: bool, strict: bool = False,
                ink: bool = False) -> tuple[np.ndarray, list[Path]]:
    """Decode image files at ``size`` (bad files skipped with a warning line each); returns (array, kept paths).

    ``ink``: grey images are cropped to their ink first (:func:`crop_to_ink`).
    """
    from transferkit.core.images import SkipLog, read_image

    skips = SkipLog(strict=strict)
    out, kept = [], []
    for p in paths:
        try:
            img = read_image(p)
        except ImageReadError as err:
            skips.add(err)
            continue
        out.append(to_array(img, size, grey, ink))
        kept.append(Path(p))
    note = skips.summary()
    if note and len(skips.skipped) > 1:
        print(f"warning: {note}", file=sys.stderr)
    if not out:
        return np.zeros((0, size, size) if grey else (0, size, size, 3), np.uint8), []
    return np.stack(out), kept


def load_image_set(data: str | os.PathLike, size: int, grey: bool | None = None, ink: bool | None = None) -> ImageSet:
    """Read DATA at ``size`` x ``size``: class folders, or Omniglot (folder, ``.zip``, or a folder of zips).

    Args:
        grey: force grey (True) or colour (False); None decides: grey for
            Omniglot, and for class folders whose images are all grey.
        ink: crop grey images to their ink before resizing (:func:`crop_to_ink`);
            None decides: on for Omniglot. ``ImageSet.ink_cropped`` says what was done.
    """
    from transferkit.core.datasets import load_omniglot, scan_class_folders

    path = Path(data)
    if not path.exists():
        raise TransferkitError(f"No such file or folder: {data}")
    if (path.is_file() and path.suffix.lower() == ".zip") or (path.is_dir() and _is_omniglot_folder(path)):
        crop = ink is not False and grey in (None, True)
        om = load_omniglot(path, size=None if crop else size)
        images = np.stack([_resize(crop_to_ink(a), size) for a in om.images]) if crop else om.images
        images = images if grey in (None, True) else np.repeat(images[..., None], 3, axis=-1)
        counters: dict[int, int] = {}
        names = []
        for y in om.labels:
            k = counters.get(int(y), 0)
            counters[int(y)] = k + 1
            names.append(f"{om.classes[int(y)]}#{k + 1:02d}")
        return ImageSet(images, om.labels, list(om.classes), "omniglot", names, str(path), crop)
    if path.is_file():
        raise TransferkitError(f"{data} is a file; give a folder with one subfolder per class, or Omniglot .zip files.")
    files = scan_class_folders(path)
    if len(files) == 0:
        raise TransferkitError(f"No images found in {data}.")
    if grey is None:
        grey = _all_grey(files.paths)
    crop = bool(ink) and grey
    images, kept = read_images(files.paths, size, grey, ink=crop)
    label_of = dict(zip(files.paths, files.labels))
    labels = np.asarray([label_of[p] for p in kept], dtype=np.int64)
    if len(labels) == 0:
        raise TransferkitError(f"None of the images in {data} could be read.")
    return ImageSet(images, labels, list(files.classes), "folders", [str(p) for p in kept], str(path), crop)


def _all_grey(paths: Sequence[Path], limit: int = 200) -> bool:
    """True when the images (up to ``limit``, spread over the list) are all single-channel files."""
    from PIL import Image

    step = max(1, len(paths) // limit)
    for p in list(paths)[::step]:
        try:
            with Image.open(p) as im:
                if im.mode not in GREY_MODES:
                    return False
        except OSError:
            continue
    return True


def check_trainable(data: ImageSet, where: str) -> None:
    """The errors a Siamese run needs before training: two classes with two images each, at least."""
    counts = data.counts()
    usable = int((counts >= 2).sum())
    if usable < 2:
        raise TransferkitError(
            f"{where} needs at least two classes with two or more images each (same-class pairs); found {usable}.")


def split_classes(data: ImageSet, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of the classes (not the images): (train class indices, held-out class indices).

    Held-out classes are never trained on: validation measures one-shot
    accuracy on classes the network has not seen, as evaluation will.
    """
    counts = data.counts()
    usable = [c for c in range(len(data.classes)) if counts[c] >= 2]
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(usable))
    n_val = int(round(len(usable) * fraction)) if fraction > 0 else 0
    if n_val and len(usable) - n_val < 2:
        n_val = max(0, len(usable) - 2)
    if 0 < n_val < 2:
        n_val = 0  # a single held-out class cannot make an episode
    val = sorted(int(c) for c in order[:n_val])
    train = sorted(int(c) for c in order[n_val:])
    return train, val


# --------------------------------------------------------------------------- tensors


def to_float_tensor(images: np.ndarray):
    """uint8 (N, H, W[, 3]) -> float32 (N, C, H, W) in [0, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


class TrainImages:
    """In-memory training images with optional rotated and mirrored classes; fetched a batch at a time.

    Each image has ``views`` versions: quarter-turns ``r`` (4 with
    ``rotations``, else 1), each also mirrored left-right with ``mirror``.
    View ``v`` of class ``c`` is class ``v * C + c`` (``C`` base classes),
    and virtual image ``v * N + i`` is image ``i`` in view ``v``; a rotated or
    mirrored character is a different character, so it is a new class.
    ``__getitems__`` returns ``(uint8 images, labels)``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, rotations: bool, mirror: bool = False):
        import torch

        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.n = len(labels)
        self.n_base = int(self.labels.max()) + 1 if self.n else 0
        self.turns = 4 if rotations else 1
        self.views = self.turns * (2 if mirror else 1)

    def __len__(self) -> int:
        return self.n * self.views

    def label(self, v: int) -> int:
        return int(self.labels[v % self.n]) + (v // self.n) * self.n_base

    def __getitem__(self, v: int):
        return self.__getitems__([v])

    def __getitems__(self, idx: Sequence[int]):
        import torch

        idx_t = torch.as_tensor(list(idx), dtype=torch.long)
        base, view = idx_t % self.n, idx_t // self.n
        x = self.images[base]  # (B, H, W[, 3]) uint8
        y = self.labels[base] + view * self.n_base
        if self.views > 1:
            hw = (1, 2)
            turn, flip = view % self.turns, view // self.turns
            if bool((flip == 1).any()):
                x[flip == 1] = torch.flip(x[flip == 1], (2,))  # left-right
            for r in (1, 2, 3):
                sel = turn == r
                if bool(sel.any()):
                    x[sel] = torch.rot90(x[sel], r, hw)
        return x, y


def identity_collate(batch: Any) -> Any:
    """``__getitems__`` already returns a batch (module level, so worker processes can pickle it)."""
    return batch


class ClassBatchSampler:
    """Batches of ``classes_per_batch`` classes x ``per_class`` images, ``steps`` batches per epoch.

    Seeded per epoch (``set_epoch``, which Lightning calls), so a resumed run
    sees the batches the interrupted one would have; under DDP each process
    draws its own batches (seeded by its rank too), so Lightning must not
    replace this sampler (``use_distributed_sampler=False``).  A class with fewer than
    ``per_class`` images contributes all of them; classes with one image are
    never drawn (they have no positive).  With rotated or mirrored classes,
    one view of a base class at most per batch.

    With ``groups`` (a group id per base class, e.g. its Omniglot alphabet)
    and ``groups_per_batch`` > 0, each batch draws its classes from that many
    random groups (topped up from the others when they hold too few), so
    most negatives are same-alphabet characters: the hard cases of one-shot
    runs, which stay inside one alphabet.
    """

    def __init__(self, dataset: TrainImages, classes_per_batch: int, per_class: int, steps: int, seed: int = 0,
                 groups: Sequence[Any] | None = None, groups_per_batch: int = 0):
        self.per_class = per_class
        self.steps = steps
        self.seed = seed
        self.epoch = 0
        self.n, self.views = dataset.n, dataset.views
        labels = dataset.labels.numpy()
        self.members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        self.base_classes = [c for c, m in self.members.items() if len(m) >= 2]
        if len(self.base_classes) < 2:
            raise TransferkitError("Training needs at least two classes with two or more images each.")
        self.classes_per_batch = max(2, min(classes_per_batch, len(self.base_classes)))
        self.group_members: list[np.ndarray] = []
        if groups is not None and groups_per_batch > 0:
            if len(groups) < dataset.n_base:
                raise ValueError(f"groups has {len(groups)} entries for {dataset.n_base} classes")
            by_group: dict[Any, list[int]] = {}
            for c in self.base_classes:
                by_group.setdefault(groups[c], []).append(c)
            if len(by_group) > groups_per_batch:  # with no more groups than that, every batch is already "grouped"
                self.group_members = [np.asarray(m) for _, m in sorted(by_group.items(), key=lambda kv: str(kv[0]))]
        self.groups_per_batch = groups_per_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, _rank()])  # under DDP each process draws its own batches
        base = np.asarray(self.base_classes)
        for _ in range(self.steps):
            chosen = self._grouped(rng) if self.group_members else rng.choice(base, self.classes_per_batch, replace=False)
            views = rng.integers(0, self.views, len(chosen))
            batch: list[int] = []
            for c, v in zip(chosen, views):
                m = self.members[int(c)]
                pick = rng.choice(m, min(self.per_class, len(m)), replace=False)
                batch.extend(int(i) + int(v) * self.n for i in pick)
            yield batch

    def _grouped(self, rng: np.random.Generator) -> np.ndarray:
        """``classes_per_batch`` classes from ``groups_per_batch`` random groups, topped up from the rest."""
        picked = rng.choice(len(self.group_members), self.groups_per_batch, replace=False)
        pool = np.concatenate([self.group_members[g] for g in picked])
        if len(pool) >= self.classes_per_batch:
            return rng.choice(pool, self.classes_per_batch, replace=False)
        rest = np.setdiff1d(np.asarray(self.base_classes), pool)
        return np.concatenate([pool, rng.choice(rest, self.classes_per_batch - len(pool), replace=False)])


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def balanced_pairs(labels: Any, generator: Any = None, hard_scores: Any = None):
    """Equal numbers of same-class and different-class pairs among a batch's items.

    Every same pair ``(i, j)`` with ``i < j`` is used; as many different pairs
    are drawn at random (or, given ``hard_scores`` (B, B), the most similar
    ones: hard negatives).  ``i != j`` always, so no image is ever paired
    with itself.

    Returns:
        (i, j, target) long, long, float tensors; target 1 = same class.
    """
    import torch

    y = labels.view(-1)
    upper = torch.triu(torch.ones(len(y), len(y), dtype=torch.bool, device=y.device), diagonal=1)
    same = (y[:, None] == y[None, :]) & upper
    diff = (y[:, None] != y[None, :]) & upper
    pi, pj = torch.nonzero(same, as_tuple=True)
    ni, nj = torch.nonzero(diff, as_tuple=True)
    n = min(len(pi), len(ni))
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=y.device)
        return empty, empty, torch.zeros(0, device=y.device)
    if len(pi) > n:
        keep = torch.randperm(len(pi), generator=generator, device="cpu")[:n].to(y.device)
        pi, pj = pi[keep], pj[keep]
    if hard_scores is not None:
        keep = torch.topk(hard_scores[ni, nj], n).indices
    else:
        keep = torch.randperm(len(ni), generator=generator, device="cpu")[:n].to(y.device)
    ni, nj = ni[keep], nj[keep]
    i = torch.cat([pi, ni])
    j = torch.cat([pj, nj])
    target = torch.cat([torch.ones(n, device=y.device), torch.zeros(n, device=y.device)])
    return i, j, target


# --------------------------------------------------------------------------- augmentation


@dataclass
class AffineRanges:
    """Koch et al.'s distortion ranges; each component is applied with probability ``p``."""

    rotate: float = 10.0  # degrees
    shear: float = 0.3
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 0.1  # fraction of the side
    p: float = 0.5
    elastic: float = 0.0  # smooth random displacement, up to this fraction of the side (0: off)


def affine_thetas(n: int, ranges: AffineRanges, generator: Any = None):
    """``n`` random affine maps (n, 2, 3) with Koch's distortion ranges, in ``affine_grid``'s output -> input form."""
    import torch

    def u(*shape: int) -> torch.Tensor:  # uniform in [-1, 1]
        return torch.rand(*shape, generator=generator) * 2 - 1

    def on(*shape: int) -> torch.Tensor:  # component switched on with probability p
        return (torch.rand(*shape, generator=generator) < ranges.p).float()

    ang = u(n) * math.radians(ranges.rotate) * on(n)
    shear = u(n, 2) * ranges.shear * on(n, 2)
    lo, hi = ranges.scale
    scale = 1 + (lo - 1 + (hi - lo) * (u(n, 2) + 1) / 2) * on(n, 2)
    shift = u(n, 2) * 2 * ranges.translate * on(n, 2)  # grid coordinates span 2 per side
    cos, sin = torch.cos(ang), torch.sin(ang)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (n, 2, 2)
    sh = torch.eye(2).repeat(n, 1, 1)
    sh[:, 0, 1], sh[:, 1, 0] = shear[:, 0], shear[:, 1]
    a = rot @ sh @ torch.diag_embed(1.0 / scale)  # the grid maps output -> input: 1/scale zooms in by scale
    return torch.cat([a, shift[:, :, None]], 2)  # (n, 2, 3)


def apply_affine(x: Any, theta: Any, displacement: Any = None):
    """Warp a float batch (N, C, H, W) by ``theta`` (N, 2, 3) (or one (2, 3) map for all); borders replicated.

    ``displacement`` (N, H, W, 2), in grid units, is added to the sampling
    grid (the elastic part of :func:`random_affine`).
    """
    import torch.nn.functional as F

    theta = theta.to(x.dtype).to(x.device)
    if theta.ndim == 2:
        theta = theta.expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement.to(x.dtype).to(x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def elastic_field(n: int, h: int, w: int, amount: float, generator: Any = None, knots: int = 4):
    """Smooth random displacements (n, h, w, 2) in grid units (a side spans 2), up to ``amount`` of the side.

    A ``knots`` x ``knots`` grid of uniform random offsets, upsampled
    bicubically: the stroke bends the way two people's drawings of one
    character differ, which an affine map cannot express.
    """
    import torch
    import torch.nn.functional as F

    coarse = (torch.rand(n, 2, knots, knots, generator=generator) * 2 - 1) * (2 * amount)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def random_affine(x: Any, ranges: AffineRanges, generator: Any = None):
    """A random affine distortion per image of a float batch (N, C, H, W), in one ``grid_sample``.

    With ``ranges.elastic`` a smooth random displacement is added to the
    sampling grid of each image (with probability ``p``).  Borders are
    replicated (a white page stays white).  With ``p == 0`` the batch is
    returned unchanged.
    """
    import torch

    if ranges.p <= 0:
        return x
    theta = affine_thetas(x.shape[0], ranges, generator)
    bend = None
    if ranges.elastic > 0:
        n, _, h, w = x.shape
        on = (torch.rand(n, generator=generator) < ranges.p).float().view(n, 1, 1, 1)
        bend = elastic_field(n, h, w, ranges.elastic, generator) * on
    return apply_affine(x, theta, bend)
