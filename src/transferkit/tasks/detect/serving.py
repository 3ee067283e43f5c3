"""A detector for a service: load it once, then detect on images already decoded (``transferkit serve``).

>>> from transferkit.tasks.detect import load_model, predict
>>> model = load_model("runs/raccoon")
>>> predict(model, [("photo.jpg", pil_image)])     # [{"path": "photo.jpg", "width", "height", "boxes": [...]}]

``predict`` is the task's serving contract: with file paths, folders or globs it is
:func:`transferkit.tasks.detect.train.predict`; with ``(name, PIL image)`` pairs it runs the same
detection on the images as given, and ``path`` in the answer is the name.
"""

from __future__ import annotations

import os
from typing import Any, Sequence


def load_model(model_or_dir: Any):
    """A detector, loaded once: a model or run directory, or a loaded
    :class:`~transferkit.core.modeldir.TransferModel` (returned as is); another task's model is one clear error."""
    from transferkit.tasks.detect.train import _load

    return _load(model_or_dir)


def detect_images(model: Any, images: Sequence[Any], conf: float | None = None, iou: float | None = None,
                  max_det: int | None = None) -> list[dict[str, Any]]:
    """Detections for PIL images (RGB, upright): one ``{"boxes", "scores", "labels"}`` of tensors per image,
    boxes in pixels of that image; ``conf`` / ``iou`` / ``max_det`` default to the model's, as in ``predict``."""
    from transferkit.tasks.detect.train import _detect_images

    model = load_model(model)
    det = model.config["detect"]
    conf = float(det.get("conf", 0.25) if conf is None else conf)
    iou = float(det.get("iou", 0.5) if iou is None else iou)
    max_det = int(det.get("max_det", 100) if max_det is None else max_det)
    images = list(images)
    return _detect_images(model, images, [im.size for im in images], conf, iou, max_det)


def predict(model_or_dir: Any, inputs: Any, conf: float | None = None, iou: float | None = None,
            max_det: int | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Boxes for ``inputs``: ``[{"path", "width", "height", "boxes": [{"label", "score", "xyxy"}]}]``.

    ``inputs``: image files, folders or globs (:func:`transferkit.tasks.detect.train.predict`: unreadable files
    are skipped with a warning, an error with ``strict``), or ``(name, PIL image)`` pairs already decoded.
    """
    from transferkit.tasks.detect.train import predict as predict_files

    items = inputs if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if isinstance(items, (str, os.PathLike)) or not items or not all(isinstance(x, tuple) and len(x) == 2 for x in items):
        return predict_files(model_or_dir, items, conf=conf, iou=iou, max_det=max_det, strict=strict)
    model = load_model(model_or_dir)
    names = model.class_names
    out = []
    for (name, img), d in zip(items, detect_images(model, [img for _, img in items], conf, iou, max_det)):
        w, h = img.size
        out.append({"path": str(name), "width": int(w), "height": int(h),
                    "boxes": [{"label": names[int(lab)], "score": round(float(sc), 4),
                               "xyxy": [round(float(v), 1) for v in b]}
                              for b, sc, lab in zip(d["boxes"], d["scores"], d["labels"])]})
    return out
