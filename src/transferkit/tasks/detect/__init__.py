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

from typing import Any

from transferkit.tasks.detect.config import METHODS, DetectConfig


def build_model(config: dict[str, Any]):
    """The untrained network of a detector model directory (used by ``transferkit.load``)."""
    from transferkit.tasks.detect.model import build_network

    return build_network(config)


def fit(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.detect.train.fit`."""
    from transferkit.tasks.detect.train import fit as _fit

    return _fit(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.detect.train.evaluate`."""
    from transferkit.tasks.detect.train import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def predict(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.detect.train.predict` (the serving contract: JSON-able dicts)."""
    from transferkit.tasks.detect.train import predict as _predict

    return _predict(*args, **kwargs)


__all__ = ["METHODS", "DetectConfig", "build_model", "fit", "evaluate", "predict"]
