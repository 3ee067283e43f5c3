"""Detection data: three annotation formats read into one record type, in-memory images, box-aware augmentation.

Formats, detected from DATA's layout (:func:`read_dataset`):

* Pascal VOC: ``images/`` (or ``JPEGImages/``) + ``annotations/*.xml`` (or ``Annotations/``);
* COCO JSON: ``--annotations FILE.json`` with DATA the images folder, or DATA a ``.json`` file
  (images beside it or in ``images/``), or a folder holding exactly one ``*.json``;
* YOLO txt: ``images/`` + ``labels/*.txt`` (``class cx cy w h``, normalised) + ``classes.txt``.

Every format gives :class:`DetRecord` objects: the image path, its size, boxes as an
``(N, 4)`` float tensor of ``x1, y1, x2, y2`` pixels of the original image, and labels
as an ``(N,)`` int64 tensor indexing the class names.  Boxes are clipped to the image;
degenerate ones (zero area, or outside the image) are dropped and counted; images with
no boxes are negatives; an unreadable annotation or image file is named in a warning
and skipped.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from transferkit.core.images import is_image_path
from transferkit.errors import TransferkitError


@dataclass
class DetRecord:
    """One image and its boxes (``boxes``: (N, 4) float32 xyxy pixels; ``labels``: (N,) int64)."""

    path: Path
    width: int
    height: int
    boxes: torch.Tensor
    labels: torch.Tensor


@dataclass
class DetData:
    """What a reader found: records, class names, and what it dropped or skipped."""

    records: list[DetRecord]
    class_names: list[str]
    format: str
    dropped_boxes: int = 0
    bad_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_boxes(self) -> int:
        return int(sum(len(r.boxes) for r in self.records))

    def summary(self) -> str:
        neg = sum(1 for r in self.records if len(r.boxes) == 0)
        text = (f"{len(self.records)} images ({neg} without objects), {self.n_boxes} boxes, "
                f"{len(self.class_names)} classes ({self.format})")
        if self.dropped_boxes:
            text += f"; dropped {self.dropped_boxes} degenerate box{'es' if self.dropped_boxes != 1 else ''}"
        if self.bad_files:
            text += f"; skipped {len(self.bad_files)} bad file{'s' if len(self.bad_files) != 1 else ''}"
        return text


class _Collector:
    """Accumulates raw boxes per image, then clips, drops degenerate boxes and builds records."""

    def __init__(self, fmt: str, quiet: bool = False):
        self.fmt = fmt
        self.quiet = quiet
        self.bad: list[tuple[str, str]] = []
        self.dropped = 0

    def warn(self, path: Any, reason: str) -> None:
        self.bad.append((str(path), reason))
        if not self.quiet:
            print(f"warning: skipped {path}: {reason}", file=sys.stderr, flush=True)

    def image_size(self, path: Path) -> tuple[int, int] | None:
        from PIL import Image

        try:
            with Image.open(path) as img:
                w, h = img.size
                try:  # EXIF-rotated photos are read upright, so their boxes refer to the upright size
                    orient = img.getexif().get(0x0112, 1)
                except Exception:
                    orient = 1
                return (h, w) if orient in (5, 6, 7, 8) else (w, h)
        except Exception as err:  # noqa: BLE001 - any unreadable header is a bad file
            self.warn(path, f"not a readable image ({type(err).__name__})")
            return None

    def record(self, path: Path, raw: Sequence[tuple[float, float, float, float, int]], size: tuple[int, int] | None = None,
               ) -> DetRecord | None:
        size = size or self.image_size(path)
        if size is None:
            return None
        w, h = size
        boxes, labels = [], []
        for x1, y1, x2, y2, c in raw:
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                self.dropped += 1
                continue
            x1, x2 = sorted((min(max(x1, 0.0), w), min(max(x2, 0.0), w)))
            y1, y2 = sorted((min(max(y1, 0.0), h), min(max(y2, 0.0), h)))
            if x2 - x1 < 1.0 or y2 - y1 < 1.0:  # zero area, or (nearly) all outside the image
                self.dropped += 1
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(int(c))
        return DetRecord(
            path=path, width=int(w), height=int(h),
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(labels, dtype=torch.int64),
        )


def _images_in(folder: Path) -> dict[str, Path]:
    """Image files of a folder (recursive), by stem relative to the folder."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and is_image_path(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            out[str(p.relative_to(folder).with_suffix(""))] = p
    return out


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


# --------------------------------------------------------------------------- Pascal VOC


def read_voc(images_dir: Path, ann_dir: Path, class_names: Sequence[str] | None = None, quiet: bool = False) -> DetData:
    """Pascal VOC XML files (``<object><name>`` + ``<bndbox>``); images without an XML file are negatives."""
    import xml.etree.ElementTree as ET

    col = _Collector("Pascal VOC", quiet)
    images = _images_in(images_dir)
    parsed: list[tuple[Path, list[tuple[float, float, float, float, str]]]] = []
    seen: set[Path] = set()
    for xml in sorted(ann_dir.rglob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as err:
            col.warn(xml, f"not valid XML ({err})")
            continue
        fname = (root.findtext("filename") or "").strip()
        stem = str(xml.relative_to(ann_dir).with_suffix(""))
        img = None
        if fname and (images_dir / fname).is_file():
            img = images_dir / fname
        elif stem in images:
            img = images[stem]
        elif fname and Path(fname).stem in images:
            img = images[Path(fname).stem]
        if img is None:
            col.warn(xml, f"its image {fname or stem} is not in {images_dir}")
            continue
        objs = []
        try:
            for obj in root.iter("object"):
                name = (obj.findtext("name") or "").strip()
                bb = obj.find("bndbox")
                if not name or bb is None:
                    raise ValueError("an <object> without <name> or <bndbox>")
                objs.append((*(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")), name))
        except (TypeError, ValueError) as err:
            col.warn(xml, f"bad object ({err})")
            continue
        parsed.append((img, objs))
        seen.add(img)
    for stem, img in images.items():
        if img not in seen:
            parsed.append((img, []))
    names = list(class_names) if class_names else sorted({o[4] for _, objs in parsed for o in objs})
    index = {n: i for i, n in enumerate(names)}
    records = []
    for img, objs in sorted(parsed, key=lambda t: str(t[0])):
        unknown = sorted({o[4] for o in objs if o[4] not in index})
        if unknown:
            col.warn(img, f"unknown class(es) {', '.join(unknown)} (the model knows {', '.join(names)})")
            continue
        rec = col.record(img, [(o[0], o[1], o[2], o[3], index[o[4]]) for o in objs])
        if rec is not None:
            records.append(rec)
    return DetData(records, names, "Pascal VOC", col.dropped, col.bad)


# --------------------------------------------------------------------------- YOLO txt


def read_yolo(images_dir: Path, labels_dir: Path, classes_file: Path | None, class_names: Sequence[str] | None = None,
              quiet: bool = False) -> DetData:
    """YOLO txt labels (``class cx cy w h``, normalised to [0, 1]); images without a label file are negatives."""
    col = _Collector("YOLO txt", quiet)
    if class_names:
        names = list(class_names)
    elif classes_file is not None and classes_file.is_file():
        names = [ln.strip() for ln in classes_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    else:
        raise TransferkitError(f"YOLO labels need a classes.txt (one class name per line) beside {labels_dir}.")
    records = []
    for stem, img in _images_in(images_dir).items():
        txt = labels_dir / f"{stem}.txt"
        rows: list[list[float]] = []
        if txt.is_file():
            try:
                for ln in txt.read_text(encoding="utf-8").splitlines():
                    if ln.strip():
                        vals = [float(v) for v in ln.split()]
                        if len(vals) != 5 or not float(vals[0]).is_integer() or not 0 <= vals[0] < len(names):
                            raise ValueError(f"line {ln.strip()!r} is not 'class cx cy w h' with a class below {len(names)}")
                        rows.append(vals)
            except (ValueError, UnicodeDecodeError) as err:
                col.warn(txt, str(err))
                continue
        size = col.image_size(img)
        if size is None:
            continue
        w, h = size
        raw = [((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, int(c)) for c, cx, cy, bw, bh in rows]
        rec = col.record(img, raw, size)
        if rec is not None:
            records.append(rec)
    return DetData(records, names, "YOLO txt", col.dropped, col.bad)


# --------------------------------------------------------------------------- COCO JSON


def read_coco(json_path: Path, images_dir: Path, class_names: Sequence[str] | None = None, quiet: bool = False) -> DetData:
    """COCO detection JSON (``images``, ``annotations`` with ``bbox: [x, y, w, h]``, ``categories``); crowd boxes skipped."""
    col = _Collector("COCO JSON", quiet)
    try:
        doc = json.loads(Path(json_path).read_text(encoding="utf-8"))
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        imgs = doc["images"]
        anns = doc.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TransferkitError(f"{json_path} is not a COCO detection JSON file ({type(err).__name__}: {err}).") from None
    names = list(class_names) if class_names else [str(c["name"]) for c in cats]
    index = {n: i for i, n in enumerate(names)}
    cat_to_label = {c["id"]: index.get(str(c["name"])) for c in cats}
    by_image: dict[Any, list] = {}
    for a in anns:
        if a.get("iscrowd"):
            continue
        by_image.setdefault(a.get("image_id"), []).append(a)
    records = []
    for im in imgs:
        path = images_dir / str(im.get("file_name", ""))
        if not path.is_file():
            col.warn(path, "listed in the COCO file but not found")
            continue
        raw = []
        ok = True
        for a in by_image.get(im.get("id"), []):
            try:
                x, y, bw, bh = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                col.warn(json_path, f"annotation {a.get('id')} has no valid bbox")
                ok = False
                break
            lab = cat_to_label.get(a.get("category_id"))
            if lab is None:
                col.warn(path, f"unknown category {a.get('category_id')}")
                ok = False
                break
            raw.append((x, y, x + bw, y + bh, lab))
        if ok:
            rec = col.record(path, raw)
            if rec is not None:
                records.append(rec)
    return DetData(records, names, "COCO JSON", col.dropped, col.bad)


# --------------------------------------------------------------------------- detection of the format


def read_dataset(data: str | os.PathLike, annotations: str | os.PathLike | None = None,
                 class_names: Sequence[str] | None = None, quiet: bool = False) -> DetData:
    """Read DATA in whichever format its layout says (see the module docstring).

    ``class_names`` fixes the label order (a trained model's classes when evaluating).

    Raises:
        TransferkitError: DATA is missing, in no known layout, or holds no usable image.
    """
    root = Path(data)
    if not root.exists():
        raise TransferkitError(f"{root} does not exist.")
    if annotations is not None or root.suffix.lower() == ".json":
        js = Path(annotations) if annotations is not None else root
        if not js.is_file():
            raise TransferkitError(f"COCO annotation file {js} does not exist.")
        base = root if root.is_dir() else root.parent
        images = _first_dir(base, ("images",)) if not any(is_image_path(p) for p in base.iterdir()) else base
        out = read_coco(js, images or base, class_names, quiet)
    elif not root.is_dir():
        raise TransferkitError(f"{root} is a file; DATA must be a folder (VOC, YOLO txt) or a COCO .json file.")
    else:
        images = _first_dir(root, ("images", "JPEGImages", "Images"))
        ann = _first_dir(root, ("annotations", "Annotations"))
        labels = _first_dir(root, ("labels",))
        jsons = sorted(root.glob("*.json"))
        if images is not None and ann is not None and any(ann.rglob("*.xml")):
            out = read_voc(images, ann, class_names, quiet)
        elif images is not None and labels is not None:
            out = read_yolo(images, labels, root / "classes.txt" if (root / "classes.txt").is_file()
                            else labels / "classes.txt", class_names, quiet)
        elif ann is not None and sorted(ann.glob("*.json")) and len(sorted(ann.glob("*.json"))) == 1:
            out = read_coco(sorted(ann.glob("*.json"))[0], images or root, class_names, quiet)
        elif len(jsons) == 1:
            out = read_coco(jsons[0], images or root, class_names, quiet)
        else:
            raise TransferkitError(
                f"{root} is not a detection data set: expected images/ with annotations/*.xml (Pascal VOC), "
                "images/ with labels/*.txt and classes.txt (YOLO), or a COCO .json (--annotations FILE)."
            )
    if not out.records:
        raise TransferkitError(f"No usable images in {root} ({out.summary()}).")
    return out


def split_records(records: Sequence[DetRecord], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split of image indices into (train, val); val is empty when the fraction is 0."""
    import numpy as np

    n = len(records)
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and n > 1 else 0), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


# --------------------------------------------------------------------------- in-memory images and augmentation


def load_resized(records: Sequence[DetRecord], size: int, quiet: bool = False) -> tuple[list[int], torch.Tensor, list[torch.Tensor]]:
    """Decode every image once, squash-resized to ``size`` x ``size`` (uint8), with its boxes scaled to match.

    Returns (indices of the records read, images (N, 3, size, size) uint8, boxes per image in resized pixels).
    Unreadable images are named on stderr and left out.
    """
    import numpy as np
    from PIL import Image

    from transferkit.core.images import read_image
    from transferkit.errors import ImageReadError

    keep, imgs, boxes = [], [], []
    for i, r in enumerate(records):
        try:
            img = read_image(r.path, draft_size=(size, size))
        except ImageReadError as err:
            if not quiet:
                print(f"warning: skipped {err.path}: {err.reason}", file=sys.stderr, flush=True)
            continue
        img = img.resize((size, size), Image.BILINEAR)
        imgs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        scale = torch.tensor([size / r.width, size / r.height, size / r.width, size / r.height])
        boxes.append(r.boxes * scale)
        keep.append(i)
    stacked = torch.stack(imgs) if imgs else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return keep, stacked, boxes


def train_transform(size: int, flip: bool = True, scale_jitter: float = 0.25, color_jitter: float = 0.2):
    """Box-aware augmentation (torchvision transforms v2) on ``{"image", "boxes", "labels"}`` samples."""
    from torchvision.transforms import v2

    ops: list[Any] = []
    if color_jitter > 0:
        c = float(color_jitter)
        ops.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(0.5, c / 4)))
    if flip:
        ops.append(v2.RandomHorizontalFlip(0.5))
    if scale_jitter > 0:
        j = float(scale_jitter)
        ops.append(v2.RandomAffine(degrees=0.0, translate=(j / 2, j / 2), scale=(1.0 - j, 1.0 + j)))
    ops.append(v2.SanitizeBoundingBoxes(min_size=2.0))
    return v2.Compose(ops)


class DetDataset(torch.utils.data.Dataset):
    """In-memory images (uint8, already resized) with their boxes; applies ``transform`` per sample.

    Items: (image float (3, S, S) in [0, 1], {"boxes": (n, 4) float xyxy, "labels": (n,) int64}).
    """

    def __init__(self, images: torch.Tensor, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                 transform: Any = None):
        self.images, self.boxes, self.labels, self.transform = images, list(boxes), list(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        img = self.images[i]
        boxes, labels = self.boxes[i], self.labels[i]
        if self.transform is not None:
            sample = {
                "image": tv_tensors.Image(img),
                "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(img.shape[-2:])),
                "labels": labels,
            }
            sample = self.transform(sample)
            img, boxes, labels = sample["image"], sample["boxes"], sample["labels"]
        return img.as_subclass(torch.Tensor).float() / 255.0, {
            "boxes": boxes.as_subclass(torch.Tensor).float().reshape(-1, 4), "labels": labels.long().reshape(-1)}


def collate(batch):
    """Stack images; keep the per-image targets as a list."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
