"""Tiny generated detection sets: coloured rectangles on noise, written as Pascal VOC, YOLO txt and COCO JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLOURS = {"blue": (30, 30, 220), "red": (220, 30, 30)}  # alphabetical: the VOC reader sorts names


def make_boxes(n_images: int = 24, size: int = 64, seed: int = 0, negatives: int = 2):
    """[(name, image array, [(x1, y1, x2, y2, class_name), ...])]; the last ``negatives`` images have no object."""
    rng = np.random.default_rng(seed)
    out = []
    names = list(COLOURS)
    for i in range(n_images):
        img = rng.normal(128, 30, (size, size, 3))
        objs = []
        if i < n_images - negatives:
            for _ in range(int(rng.integers(1, 3))):
                w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
                x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                c = names[int(rng.integers(0, len(names)))]
                img[y1:y1 + h, x1:x1 + w] = COLOURS[c]
                objs.append((x1, y1, x1 + w, y1 + h, c))
        out.append((f"img_{i:03d}", np.clip(img, 0, 255).astype(np.uint8), objs))
    return out


def write_voc(root: Path, items, extra_objects: dict | None = None) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for name, arr, objs in items:
        Image.fromarray(arr).save(root / "images" / f"{name}.png")
        h, w = arr.shape[:2]
        allobjs = list(objs) + list((extra_objects or {}).get(name, []))
        xml = "".join(f"<object><name>{c}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                      f"<ymax>{y2}</ymax></bndbox></object>" for x1, y1, x2, y2, c in allobjs)
        (root / "annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{xml}</annotation>")
    return root


def write_yolo(root: Path, items) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    for name, arr, objs in items:
        Image.fromarray(arr).save(root / "images" / f"{name}.png")
        h, w = arr.shape[:2]
        lines = [f"{names.index(c)} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"
                 for x1, y1, x2, y2, c in objs]
        if lines:
            (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_coco(root: Path, items) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    doc = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    for k, (name, arr, objs) in enumerate(items):
        Image.fromarray(arr).save(root / "images" / f"{name}.png")
        h, w = arr.shape[:2]
        doc["images"].append({"id": k, "file_name": f"{name}.png", "width": w, "height": h})
        for x1, y1, x2, y2, c in objs:
            doc["annotations"].append({"id": len(doc["annotations"]), "image_id": k, "category_id": names.index(c) + 1,
                                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps(doc))
    return root
