"""Readers for the data layouts transferkit accepts, and seeded stratified splits.

Every reader names the file or folder it rejects, in one sentence.

* labelled image files: a folder with one subfolder per class (optionally
  ``train/`` and ``val/`` splits), or a CSV of ``path,label``;
* image arrays: scikit-learn's ``digits`` (embedded, no download), an MNIST
  IDX folder (``*-images-idx3-ubyte[.gz]`` + labels), or an image folder
  decoded into a fixed size;
* Omniglot: ``alphabet/character/*.png`` from a folder or straight from the
  official ``.zip`` files;
* sentence pairs: ``source<TAB>target`` lines (extra columns ignored).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.core.images import is_image_path
from transferkit.errors import ImageReadError, TransferkitError

# --------------------------------------------------------------------------- labelled image files


@dataclass
class LabelledFiles:
    """Image paths with integer labels indexing ``classes``."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def subset(self, idx: Sequence[int]) -> "LabelledFiles":
        return LabelledFiles([self.paths[i] for i in idx], [self.labels[i] for i in idx], list(self.classes))


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and is_image_path(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan_class_folders(root: str | os.PathLike, classes: Sequence[str] | None = None) -> LabelledFiles:
    """Read ``root/<class>/**/image`` (sorted class names; hidden folders ignored).

    Args:
        classes: fix the class list (e.g. the training classes when reading a
            validation folder); a folder of another name is then an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise TransferkitError(f"No such folder: {root}")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise TransferkitError(f"{root} has no class subfolders (expected one folder of images per class).")
    names = list(classes) if classes is not None else subdirs
    unknown = [d for d in subdirs if d not in names]
    if unknown:
        raise TransferkitError(f"{root} has folders that are not known classes: {', '.join(unknown)} (classes: {', '.join(names)}).")
    paths, labels = [], []
    for i, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in _images_under(folder):
            paths.append(p)
            labels.append(i)
    return LabelledFiles(paths, labels, names)


def read_csv_labels(path: str | os.PathLike, classes: Sequence[str] | None = None) -> LabelledFiles:
    """Read a CSV of ``path,label`` rows (a header row is detected and skipped).

    Relative image paths are taken relative to the CSV's folder.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise TransferkitError(f"Cannot read {path} ({err}).") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    items = []
    for n, r in enumerate(rows, 1):
        if len(r) < 2 or not r[0].strip() or not r[1].strip():
            raise TransferkitError(f"{path}, row {n}: expected 'path,label', got {','.join(r)!r}.")
        p = Path(r[0].strip())
        items.append((p if p.is_absolute() else path.parent / p, r[1].strip()))
    names = list(classes) if classes is not None else sorted({lab for _, lab in items})
    index = {c: i for i, c in enumerate(names)}
    bad = sorted({lab for _, lab in items if lab not in index})
    if bad:
        raise TransferkitError(f"{path} has labels that are not known classes: {', '.join(bad[:5])}.")
    missing = [str(p) for p, _ in items if not p.is_file()]
    if missing:
        raise TransferkitError(f"{path} lists {len(missing)} file(s) that do not exist, e.g. {missing[0]}.")
    return LabelledFiles([p for p, _ in items], [index[lab] for _, lab in items], names)


def check_classes(data: LabelledFiles, where: str, min_per_class: int = 2) -> None:
    """The errors a classifier needs before any training: no images, one class, too few per class."""
    if len(data) == 0:
        raise TransferkitError(f"No images found in {where}.")
    counts = data.counts()
    present = [c for c, n in counts.items() if n > 0]
    if len(present) < 2:
        raise TransferkitError(f"{where} has a single class ({', '.join(present) or 'none'}); a classifier needs at least two.")
    small = [f"{c} ({n})" for c, n in counts.items() if n < min_per_class]
    if small:
        raise TransferkitError(
            f"{where}: every class needs at least {min_per_class} images; too few in " + ", ".join(small) + "."
        )


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split keeping class proportions; every class with >= 2 items keeps one in each part."""
    if not 0 < val_fraction < 1:
        raise TransferkitError(f"The validation fraction must be between 0 and 1 (got {val_fraction}).")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


@dataclass
class LabelledSplit:
    """Train and validation files, and how the split was made (recorded in the run)."""

    train: LabelledFiles
    val: LabelledFiles
    how: str
    split_files: dict[str, list[str]] = field(default_factory=dict)


def labelled_source(data: str | os.PathLike) -> Path:
    """DATA as a path that can hold labelled images: an existing folder, or a CSV of ``path,label``."""
    data = Path(data)
    if not data.exists():
        raise TransferkitError(f"No such file or folder: {data}")
    if data.is_file() and data.suffix.lower() != ".csv":
        raise TransferkitError(f"{data} is a file; give a folder with one subfolder per class, or a CSV of path,label.")
    return data


def load_labelled(data: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> LabelledSplit:
    """Read labelled images from a class-folder tree (with or without ``train/``+``val/``) or a CSV.

    Without a given validation split, a seeded stratified one is made; its
    file lists are returned so the run can record them.
    """
    data = labelled_source(data)
    if data.is_file():
        full = read_csv_labels(data)
        where = str(data)
    elif (data / "train").is_dir() and (data / "val").is_dir():
        train = scan_class_folders(data / "train")
        check_classes(train, str(data / "train"))
        val = scan_class_folders(data / "val", classes=train.classes)
        if len(val) == 0:
            raise TransferkitError(f"{data / 'val'} holds no images.")
        return LabelledSplit(train, val, f"given: {data / 'train'} and {data / 'val'}")
    else:
        full = scan_class_folders(data)
        where = str(data)
    check_classes(full, where)
    tr, va = stratified_split(full.labels, val_fraction, seed)
    train, val = full.subset(tr), full.subset(va)
    how = f"stratified {1 - val_fraction:.0%}/{val_fraction:.0%} split of {where}, seed {seed}"
    return LabelledSplit(train, val, how, {"train": [str(p) for p in train.paths], "val": [str(p) for p in val.paths]})


def imbalance_note(data: LabelledFiles) -> str | None:
    """A warning sentence when the largest class has over 1.5x the images of the smallest."""
    counts = data.counts()
    lo, hi = min(counts.values()), max(counts.values())
    if lo and hi / lo > 1.5:
        listing = ", ".join(f"{c}: {n}" for c, n in counts.items())
        return f"classes are imbalanced ({listing}); consider --class-weights"
    return None


# --------------------------------------------------------------------------- image arrays


@dataclass
class ArrayData:
    """Images as a uint8 array, (N, H, W) grey or (N, H, W, 3) colour, with optional labels."""

    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[-1]

    def subset(self, idx: Sequence[int]) -> "ArrayData":
        idx = np.asarray(idx, dtype=int)
        return ArrayData(self.images[idx], None if self.labels is None else self.labels[idx], self.classes, self.source)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise TransferkitError(f"Cannot read {path} ({err}).") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TransferkitError(f"{path} is not an IDX file.")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise TransferkitError(f"{path}: unknown IDX element type {raw[2]:#x}.")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise TransferkitError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}.")
    return data.reshape(dims)


def _find_idx(folder: Path, kind: str) -> list[Path]:
    pats = [f"*{kind}-idx*-ubyte", f"*{kind}-idx*-ubyte.gz", f"*{kind}.idx*-ubyte", f"*{kind}.idx*-ubyte.gz"]
    return sorted({p for pat in pats for p in folder.glob(pat)})


def load_mnist(folder: str | os.PathLike) -> ArrayData:
    """Read an MNIST-style IDX folder (``t10k-images-idx3-ubyte.gz`` and labels; train files too if present)."""
    folder = Path(folder)
    images_files = _find_idx(folder, "images")
    if not images_files:
        raise TransferkitError(f"{folder} has no *-images-idx3-ubyte[.gz] file.")
    imgs, labs = [], []
    for img_file in images_files:
        lab_file = None
        for cand in _find_idx(folder, "labels"):
            if cand.name.split("-")[0] == img_file.name.split("-")[0]:
                lab_file = cand
        x = read_idx(img_file)
        if x.ndim != 3:
            raise TransferkitError(f"{img_file} does not hold 2-D images.")
        imgs.append(x.astype(np.uint8))
        if lab_file is not None:
            y = read_idx(lab_file).astype(np.int64)
            if len(y) != len(x):
                raise TransferkitError(f"{lab_file} has {len(y)} labels for {len(x)} images.")
            labs.append(y)
    images = np.concatenate(imgs)
    labels = np.concatenate(labs) if len(labs) == len(imgs) else None
    return ArrayData(images, labels, [str(i) for i in range(10)], f"mnist:{folder}")


def load_digits() -> ArrayData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, embedded, no download), scaled to 0..255."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return ArrayData(images, d.target.astype(np.int64), [str(i) for i in range(10)], "digits")


def load_image_folder_arrays(folder: str | os.PathLike, size: tuple[int, int], grayscale: bool) -> ArrayData:
    """Decode every image under ``folder`` to a fixed (H, W); class subfolders (if any) become labels."""
    from PIL import Image

    from transferkit.core.images import SkipLog, read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise TransferkitError(f"No such folder: {folder}")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        files = scan_class_folders(folder)
    else:
        paths = _images_under(folder)
        files = LabelledFiles(paths, [0] * len(paths), ["all"])
    if len(files) == 0:
        raise TransferkitError(f"No images found in {folder}.")
    skips = SkipLog()
    out, labels = [], []
    for p, y in zip(files.paths, files.labels):
        try:
            img = read_image(p)
        except ImageReadError as err:
            skips.add(err)
            continue
        img = img.convert("L") if grayscale else img
        out.append(np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8))
        labels.append(y)
    if not out:
        raise TransferkitError(f"None of the images in {folder} could be read.")
    return ArrayData(np.stack(out), np.asarray(labels, dtype=np.int64) if subdirs else None, files.classes, f"folder:{folder}")


def load_arrays(data: str | os.PathLike, size: tuple[int, int] | None = None, grayscale: bool | None = None) -> ArrayData:
    """``digits``, an MNIST IDX folder, or an image folder (decoded at ``size``, default 32x32)."""
    text = os.fspath(data)
    if text == "digits":
        return load_digits()
    path = Path(text)
    if not path.exists():
        raise TransferkitError(f"No such file or folder: {text} (use 'digits' for the embedded data set).")
    if path.is_dir() and _find_idx(path, "images"):
        return load_mnist(path)
    if path.is_dir():
        return load_image_folder_arrays(path, size or (32, 32), bool(grayscale))
    raise TransferkitError(f"{text} is not 'digits', an MNIST IDX folder or an image folder.")


# --------------------------------------------------------------------------- Omniglot


@dataclass
class Omniglot:
    """Omniglot characters: grey images (N, 105, 105) uint8 (ink = 0), a class per character.

    ``classes[i]`` is ``alphabet/character``; ``alphabets[i]`` its alphabet.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    alphabets: list[str]
    source: str


def _omniglot_members(path: Path) -> list[tuple[str, Any]]:
    """(relative name 'alphabet/character/file.png', opener) for a folder, a .zip, or a folder of .zips."""
    out: list[tuple[str, Any]] = []
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise TransferkitError(f"{path} is not a valid zip file.") from None
        for name in zf.namelist():
            if name.lower().endswith(".png") and not name.startswith("__MACOSX"):
                parts = name.split("/")
                if len(parts) >= 3:
                    out.append(("/".join(parts[-3:]), (zf, name)))
        return out
    if path.is_dir():
        zips = sorted(path.glob("*.zip"))
        pngs = sorted(p for p in path.rglob("*.png"))
        if pngs:
            for p in pngs:
                rel = p.relative_to(path).parts
                if len(rel) >= 3:
                    out.append(("/".join(rel[-3:]), p))
            return out
        for z in zips:
            out.extend(_omniglot_members(z))
        return out
    raise TransferkitError(f"No such file or folder: {path}")


def load_omniglot(paths: str | os.PathLike | Sequence[str | os.PathLike], size: int | None = None) -> Omniglot:
    """Read Omniglot (``alphabet/character/*.png``) from folders and/or official ``.zip`` files.

    Args:
        size: resize the 105x105 characters to ``size`` x ``size`` (None: keep).
    """
    from PIL import Image

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    members: list[tuple[str, Any]] = []
    for p in paths:
        members.extend(_omniglot_members(Path(p)))
    if not members:
        raise TransferkitError(f"No Omniglot images (alphabet/character/*.png) found in {', '.join(map(str, paths))}.")
    members.sort(key=lambda m: m[0])
    classes: list[str] = []
    index: dict[str, int] = {}
    images, labels = [], []
    for rel, src in members:
        alphabet, character, _ = rel.split("/")
        key = f"{alphabet}/{character}"
        if key not in index:
            index[key] = len(classes)
            classes.append(key)
        try:
            if isinstance(src, tuple):
                img = Image.open(io.BytesIO(src[0].read(src[1])))
            else:
                img = Image.open(src)
            img = img.convert("L")
        except OSError as err:
            raise TransferkitError(f"Cannot read Omniglot image {rel} ({err}).") from None
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        images.append(np.asarray(img, dtype=np.uint8))
        labels.append(index[key])
    return Omniglot(
        np.stack(images), np.asarray(labels, dtype=np.int64), classes, [c.split("/")[0] for c in classes],
        ", ".join(map(str, paths)),
    )


# --------------------------------------------------------------------------- sentence pairs


@dataclass
class Pairs:
    """Sentence pairs and what was skipped while reading them."""

    pairs: list[tuple[str, str]]
    skipped: dict[str, int]
    source: str

    def summary(self) -> str | None:
        bad = {k: v for k, v in self.skipped.items() if v}
        if not bad:
            return None
        return "skipped " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in bad.items())


def read_pairs(path: str | os.PathLike, max_pairs: int | None = None, max_chars: int | None = None) -> Pairs:
    """Read ``source<TAB>target`` lines (UTF-8; extra columns ignored).

    Empty lines, lines without a tab, pairs with an empty side and (with
    ``max_chars``) over-long pairs are skipped and counted, never fatal.
    """
    path = Path(path)
    if not path.is_file():
        raise TransferkitError(f"No such file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise TransferkitError(f"{path} is not UTF-8 text (byte {err.start}).") from None
    pairs: list[tuple[str, str]] = []
    skipped = {"empty_lines": 0, "lines_without_tab": 0, "empty_sides": 0, "over_long_pairs": 0}
    for line in text.splitlines():
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
        if not line.strip():
            skipped["empty_lines"] += 1
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            skipped["lines_without_tab"] += 1
            continue
        src, tgt = cols[0].strip(), cols[1].strip()
        if not src or not tgt:
            skipped["empty_sides"] += 1
            continue
        if max_chars is not None and (len(src) > max_chars or len(tgt) > max_chars):
            skipped["over_long_pairs"] += 1
            continue
        pairs.append((src, tgt))
    if not pairs:
        raise TransferkitError(f"{path} has no usable 'source<TAB>target' lines.")
    return Pairs(pairs, skipped, str(path))
