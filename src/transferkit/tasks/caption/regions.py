"""Region captions (Karpathy & Fei-Fei 2015's extension): propose boxes, caption each crop, draw box + caption.

Boxes come from a detector run (the CLI passes a ``detect`` model's boxes) or,
without one, from selective search (OpenCV's ``ximgproc``, "fast" mode, on the
image scaled to at most 320 pixels), keeping regions of at least
``min_frac`` of the image's area, largest first, and dropping near-duplicates
(IoU above ``merge_iou`` with a region already kept).  Each region is cropped
from the original image and captioned like a whole image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from transferkit.errors import TransferkitError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the original image


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def dedupe(boxes: Sequence[Box], merge_iou: float = 0.5, max_regions: int = 8) -> list[Box]:
    """Greedy: keep boxes in the given order unless one already kept overlaps with IoU > ``merge_iou``."""
    kept: list[Box] = []
    for b in boxes:
        if all(iou(b, k) <= merge_iou for k in kept):
            kept.append(b)
            if len(kept) >= max_regions:
                break
    return kept


def selective_search(image: Any, max_regions: int = 8, min_frac: float = 0.04, max_frac: float = 0.9,
                     merge_iou: float = 0.5) -> list[Box]:
    """Region proposals of a PIL image (see the module docstring), largest first."""
    import numpy as np

    try:
        import cv2

        ss_mod = cv2.ximgproc.segmentation
    except (ImportError, AttributeError):
        raise TransferkitError("Region proposals need opencv-contrib-python (cv2.ximgproc); "
                               "install it, or pass --detector RUN_DIR.") from None
    w, h = image.size
    scale = min(1.0, 320.0 / max(w, h))
    small = image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))))
    arr = np.ascontiguousarray(np.asarray(small)[:, :, ::-1])  # RGB -> BGR
    cv2.setNumThreads(1)
    ss = ss_mod.createSelectiveSearchSegmentation()
    ss.setBaseImage(arr)
    ss.switchToSelectiveSearchFast()
    rects = ss.process()  # (N, 4) x, y, w, h
    area = float(w * h)
    boxes = []
    for x, y, bw, bh in rects[:2000]:
        b = (x / scale, y / scale, min(w, (x + bw) / scale), min(h, (y + bh) / scale))
        frac = (b[2] - b[0]) * (b[3] - b[1]) / area
        if min_frac <= frac <= max_frac:
            boxes.append(b)
    boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
    return dedupe(boxes, merge_iou, max_regions)


def caption_regions(captioner: Any, path: str | Path, boxes: Sequence[Box] | None = None, max_regions: int = 8,
                    beam: int | None = None) -> dict[str, Any]:
    """``{"path", "caption" (whole image), "regions": [{"xyxy", "caption", "score"}]}`` for one image.

    ``boxes``: a detector's boxes (pixels of the image); None proposes them by selective search.
    """
    from transferkit.core.images import read_image

    image = read_image(path).convert("RGB")
    if boxes is None:
        boxes = selective_search(image, max_regions)
    else:
        boxes = dedupe([tuple(map(float, b)) for b in boxes], 0.7, max_regions)
    crops = [(f"{Path(path).name}#{i}", image.crop(tuple(round(v) for v in b))) for i, b in enumerate(boxes)]
    whole = captioner.caption([(str(path), image)], beam=beam)[0]
    rows = captioner.caption(crops, beam=beam) if crops else []
    regions = [{"xyxy": [round(v, 1) for v in b], "caption": r["caption"], "score": r["score"]}
               for b, r in zip(boxes, rows)]
    return {"path": str(path), "caption": whole["caption"], "score": whole["score"], "regions": regions}


def draw_regions(path: str | Path, result: dict[str, Any], out: str | Path) -> Path:
    """The image with each region's box and caption drawn on it, saved as ``out`` (PNG)."""
    from PIL import ImageDraw

    from transferkit.core.images import read_image
    from transferkit.core.modeldir import atomic_write_bytes

    image = read_image(path).convert("RGB")
    d = ImageDraw.Draw(image)
    colours = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230)]
    for i, r in enumerate(result["regions"]):
        c = colours[i % len(colours)]
        x0, y0, x1, y1 = r["xyxy"]
        d.rectangle((x0, y0, x1, y1), outline=c, width=2)
        label = f"{i + 1}: {r['caption']}"
        tx, ty = x0 + 2, max(0, y0 - 12) if y0 >= 12 else y0 + 2
        box = d.textbbox((tx, ty), label)
        d.rectangle(box, fill=(0, 0, 0))
        d.text((tx, ty), label, fill=c)
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(out, buf.getvalue())
