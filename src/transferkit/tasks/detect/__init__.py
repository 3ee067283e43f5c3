"""Object detection: ``yolo`` (single-shot grid detector), ``rcnn`` (selective search + CNN features + linear
classifiers) and ``localize`` (one object, ``[p, x, y, w, h, c1..ck]``), on a pretrained backbone.

>>> from transferkit.tasks.detect import DetectConfig, fit, evaluate, predict
>>> run = fit(DetectConfig(epochs=30), "raccoon/", "runs/raccoon")     # VOC, COCO JSON or YOLO txt
>>> evaluate(run, "more_raccoons/")                                    # {"map50", "map", "per_class", ...}
>>> predict(run, ["photo.jpg"])                                        # [{"path", "boxes": [{"label", "score", "xyxy"}]}]
>>> predict(load_model(run), [("photo.jpg", pil_image)])              # the same on decoded images (serve)

Modules: ``data`` (readers, augmentation), ``model`` (networks and losses), ``module`` (LightningModule),
``metrics`` (mAP and friends), ``rcnn``, ``report``, ``train`` (the functions above), ``serving`` (``predict``
on decoded images, ``load_model``, ``detect_images``).
"""

from __future__ import annotations

from transferkit.core.lazy import lazy_exports
from transferkit.tasks.detect.config import METHODS, DetectConfig

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_model": "model:build_network",
    "fit": "train",
    "evaluate": "train",
    "predict": "serving",  # files as train.predict, or decoded (name, PIL image) pairs
    "load_model": "serving",
    "detect_images": "serving",
})

__all__ = ["METHODS", "DetectConfig", "build_model", "detect_images", "evaluate", "fit", "load_model", "predict"]
