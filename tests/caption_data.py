"""Tiny generated captioned images for the caption tests: coloured shapes on a dark background."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (50, 80, 230)}
SHAPES = ("square", "circle")


def shape_image(colour: str, shape: str, size: int, rng) -> "Image.Image":
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(0, 40, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = int(size * rng.uniform(0.25, 0.4))
    cx, cy = (int(size / 2 + rng.integers(-size // 10, size // 10 + 1)) for _ in range(2))
    box = (cx - r, cy - r, cx + r, cy + r)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLOURS[colour])
    return img


def make_shapes(root: Path, n_per: int = 6, size: int = 32, seed: int = 0, fmt: str = "csv") -> Path:
    """Write images of every (colour, shape) with two captions each; ``fmt``: csv | coco | jsonl."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for colour in COLOURS:
        for shape in SHAPES:
            for i in range(n_per):
                name = f"{colour}_{shape}_{i}.png"
                shape_image(colour, shape, size, rng).save(img_dir / name)
                rows.append((name, [f"A {colour} {shape} .", f"a {colour} {shape} on a dark background"]))
    write_captions(root, rows, fmt)
    return root


def write_captions(root: Path, rows, fmt: str) -> Path:
    if fmt == "csv":
        lines = ["image,caption"] + [f"{name},{c}" for name, caps in rows for c in caps]
        (root / "captions.txt").write_text("\n".join(lines) + "\n")
        return root / "captions.txt"
    if fmt == "jsonl":
        path = root / "captions.jsonl"
        path.write_text("".join(json.dumps({"image": n, "captions": caps}) + "\n" for n, caps in rows))
        return path
    images = [{"id": i, "file_name": n} for i, (n, _) in enumerate(rows)]
    anns = [{"id": 100 * i + j, "image_id": i, "caption": c} for i, (_, caps) in enumerate(rows) for j, c in enumerate(caps)]
    path = root / "captions_train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path
