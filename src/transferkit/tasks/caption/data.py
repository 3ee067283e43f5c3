"""Captioned images: three readers that give the same thing, an image-level split, caption text cleaning.

``DATA`` may be

* a folder with ``captions.txt`` (CSV ``image,caption``, a header line optional,
  several rows per image; the Flickr8k layout), images in ``images/`` or beside it;
* a COCO captions file ``captions_*.json`` (``images`` with ``id``/``file_name``,
  ``annotations`` with ``image_id``/``caption``), or a folder holding one, images
  in the same folder, its ``images/``, or a folder named like the file's split
  (``captions_val2014.json`` -> ``val2014/``);
* a JSON lines file (``.jsonl``) of ``{"image": ..., "captions": [...]}``
  (or ``"caption": "..."``), or a folder holding one.

Image paths are relative to the folder of the captions file (or its
``images/``).  A caption whose image file is missing and an image file without
a caption are counted and named (:meth:`CaptionSet.summary`), never fatal.
"""

from __future__ import annotations

import csv
import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from transferkit.errors import TransferkitError

_PUNCT = re.compile(r"[^\w\s]+")


def clean_caption(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: ``"A dog , running ."`` -> ``"a dog running"``
    (the usual preparation of Flickr8k and COCO captions before training and scoring)."""
    text = unicodedata.normalize("NFC", str(text)).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


@dataclass
class CaptionSet:
    """Images with their captions, in file order.

    Attributes:
        images: image paths (each once).
        captions: for each image, its raw captions (at least one).
        missing: image names that captions refer to but that are not on disk.
        uncaptioned: image files in the image folder that no caption refers to.
        source: the captions file that was read.
    """

    images: list[Path]
    captions: list[list[str]]
    missing: list[str] = field(default_factory=list)
    uncaptioned: list[str] = field(default_factory=list)
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.images)

    def pairs(self) -> list[tuple[Path, str]]:
        """(image, caption) for every caption."""
        return [(img, c) for img, caps in zip(self.images, self.captions) for c in caps]

    def subset(self, idx: Sequence[int]) -> "CaptionSet":
        return CaptionSet([self.images[i] for i in idx], [self.captions[i] for i in idx], source=self.source)

    def summary(self) -> str | None:
        """One line naming the orphans (first five of each kind), or None when there are none."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} captioned image(s) not found ({_names(self.missing)})")
        if self.uncaptioned:
            parts.append(f"{len(self.uncaptioned)} image(s) without captions ignored ({_names(self.uncaptioned)})")
        return "; ".join(parts) or None


def _names(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... {len(names) - n} more" if len(names) > n else "")


# --------------------------------------------------------------------------- readers


def _read_csv(path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or not any(c.strip() for c in row):
                    continue
                if i == 0 and [c.strip().lower() for c in row[:2]] == ["image", "caption"]:
                    continue  # header
                if len(row) < 2:
                    raise TransferkitError(f"{path}, line {i + 1}: expected 'image,caption', got {','.join(row)!r}.")
                rows.append((row[0].strip(), ",".join(row[1:]).strip()))  # an unquoted comma stays in the caption
    except UnicodeDecodeError as err:
        raise TransferkitError(f"{path} is not UTF-8 text (byte {err.start}).") from None
    return rows


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TransferkitError(f"{path} is not valid JSON ({err}).") from None


def _read_coco(path: Path) -> list[tuple[str, str]]:
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) or not isinstance(data.get("images"), list):
        raise TransferkitError(f"{path} is not a COCO captions file (needs 'images' and 'annotations' lists).")
    names = {}
    for im in data["images"]:
        if isinstance(im, dict) and "id" in im and "file_name" in im:
            names[im["id"]] = str(im["file_name"])
    rows = []
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "caption" not in ann or "image_id" not in ann:
            raise TransferkitError(f"{path}: an annotation lacks 'image_id' or 'caption' ({str(ann)[:80]}).")
        name = names.get(ann["image_id"])
        if name is None:
            raise TransferkitError(f"{path}: annotation for image id {ann['image_id']} that 'images' does not list.")
        rows.append((name, str(ann["caption"]).strip()))
    # images listed without any annotation still count as uncaptioned if they are on disk (see read_captions)
    return rows


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise TransferkitError(f"{path} is not UTF-8 text (byte {err.start}).") from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise TransferkitError(f"{path}, line {i + 1}: not valid JSON ({err.msg}).") from None
        caps = obj.get("captions", obj.get("caption")) if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or "image" not in obj or caps is None:
            raise TransferkitError(f'{path}, line {i + 1}: expected {{"image": ..., "captions": [...]}}.')
        for c in [caps] if isinstance(caps, str) else caps:
            rows.append((str(obj["image"]), str(c).strip()))
    return rows


def find_captions_file(data: str | Path) -> tuple[Path, str]:
    """The captions file of ``data`` and its format (``csv``, ``coco`` or ``jsonl``)."""
    data = Path(data)
    if data.is_file():
        suffix = data.suffix.lower()
        if suffix in (".txt", ".csv", ".tsv"):
            return data, "csv"
        if suffix == ".json":
            return data, "coco"
        if suffix in (".jsonl", ".ndjson"):
            return data, "jsonl"
        raise TransferkitError(f"{data}: unknown captions format; use captions.txt (CSV), a COCO .json or a .jsonl file.")
    if not data.is_dir():
        raise TransferkitError(f"No such file or folder: {data}")
    if (data / "captions.txt").is_file():
        return data / "captions.txt", "csv"
    found = sorted(data.glob("captions*.json")) or sorted(data.glob("*.json"))
    if found:
        return found[0], "coco"
    found = sorted(data.glob("*.jsonl"))
    if found:
        return found[0], "jsonl"
    raise TransferkitError(f"{data} holds no captions.txt, captions_*.json or .jsonl file.")


def _image_root(cap_file: Path, fmt: str, names: Sequence[str]) -> Path:
    """Where the images are: the candidate folder in which most of ``names`` exist."""
    base = cap_file.parent
    cands = [base / "images", base]
    if fmt == "coco":
        m = re.match(r"captions_(\w+)\.json$", cap_file.name)
        if m:
            cands.insert(0, base / m.group(1))
    sample = list(names)[:50]
    best = max(cands, key=lambda d: sum((d / n).is_file() for n in sample) if d.is_dir() else -1)
    return best


def read_captions(data: str | Path) -> CaptionSet:
    """Read a captioned image set in any of the three formats (see the module docstring)."""
    from transferkit.core.images import is_image_path

    cap_file, fmt = find_captions_file(data)
    rows = {"csv": _read_csv, "coco": _read_coco, "jsonl": _read_jsonl}[fmt](cap_file)
    rows = [(n, c) for n, c in rows if n and clean_caption(c)]
    if not rows:
        raise TransferkitError(f"{cap_file} holds no captions.")
    by_image: dict[str, list[str]] = {}
    for name, cap in rows:
        by_image.setdefault(name, []).append(cap)
    root = _image_root(cap_file, fmt, list(by_image))
    images, captions, missing = [], [], []
    for name, caps in by_image.items():
        p = root / name
        if p.is_file():
            images.append(p)
            captions.append(caps)
        else:
            missing.append(name)
    referenced = {p.resolve() for p in images}
    uncaptioned = [] if all(Path(n).is_absolute() for n in by_image) else sorted(  # absolute paths: no image folder
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and is_image_path(p) and p.resolve() not in referenced
    )
    if not images:
        raise TransferkitError(f"None of the images named in {cap_file} exist under {root} (e.g. {missing[0]}).")
    return CaptionSet(images, captions, missing, uncaptioned, cap_file)


def split_images(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded image-level split: (training indices, validation indices), both sorted; at least one of each."""
    if n < 2:
        raise TransferkitError("Need at least two captioned images to hold one out for validation.")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])
