"""Object detection: ``yolo`` (single-shot grid detector), ``rcnn`` (selective search + CNN features + linear
classifiers) and ``localize`` (one object, ``[p, x, y, w, h, c1..ck]``), on a pretrained backbone.

>>> from transferkit.tasks.detect import DetectConfig, fit, evaluate, predict
>>> run = fit(DetectConfig(epochs=30), "raccoon/", "runs/raccoon")     # VOC, COCO JSON or YOLO txt
>>> evaluate(run, "more_raccoons/")                                    # {"map50", "map", "per_class", ...}
>>> predict(run, ["photo.jpg"])                                        # [{"path", "boxes": [{"label", "score", "xyxy"}]}]

Modules: ``data`` (readers, augmentation), ``model`` (networks and losses), ``module`` (LightningModule),
``metrics`` (mAP and friends), ``rcnn``, ``report``, ``train`` (the functions above).
"""

from __future__ import annotations

from transferkit.core.lazy import lazy_exports
from transferkit.tasks.detect.config import METHODS, DetectConfig

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_model": "model:build_network",
    "fit": "train",
    "evaluate": "train",
    "predict": "train",
})

__all__ = ["METHODS", "DetectConfig", "build_model", "fit", "evaluate", "predict"]
