"""``DetectConfig``: every option of ``transferkit detect fit``, with its documented default.

The flags are generated from these fields (``image_size`` -> ``--image-size``);
the resolved config is saved as ``RUN_DIR/config.yaml`` and ``--config FILE``
reproduces a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from transferkit.core.config import doc, require
from transferkit.core.engine import TrainConfig

METHODS = ("yolo", "rcnn", "localize")


@dataclass
class DetectConfig(TrainConfig):
    """Options of an object-detector run (a pretrained backbone + a detection method)."""

    method: Literal["yolo", "rcnn", "localize"] = doc(
        "yolo: single-shot grid detector on the backbone's multi-scale features (default); "
        "rcnn: selective-search proposals + CNN features + per-class linear classifiers and box regression; "
        "localize: one object per image, output [p, x, y, w, h, c1..ck]",
        "yolo",
    )
    backbone: str = doc("pretrained backbone (a timm name or a registered weight set, e.g. efficientnet_lite0)",
                        "efficientnet_lite0")
    weights: str = doc("backbone weights: pretrained (offline resolution), none (random init), or a weights file",
                       "pretrained")
    image_size: int = doc("images are resized to this square size in pixels (predictions are mapped back)", 320)
    epochs: int = doc("maximum training epochs (yolo, localize); whichever of this and the time budget comes first "
                      "ends the run (a BCCD run on a 2-core CPU: after 20-25 minutes)", 50)
    batch_size: int = doc("images per batch", 8)
    lr: float = doc("peak learning rate of the new layers (AdamW, cosine schedule)", 2e-3)
    backbone_lr: float = doc("learning-rate factor of the pretrained backbone (0 freezes it)", 0.1)
    freeze_stages: Optional[int] = doc(
        "keep the backbone's stem and its first N stages (stage 1 ends at stride 2, stage 2 at stride 4, ...) "
        "frozen: generic early filters, and no backward pass through the largest feature maps; none (default): 3 "
        "for yolo over pretrained weights or a weights file (1.5x faster steps and a higher BCCD mAP at equal time, "
        "BENCHMARKS.md), 0 for localize and for --weights none (random filters are worth training)", None)
    weight_decay: float = doc("AdamW weight decay", 1e-4)
    time_budget: Optional[float] = doc(
        "stop training after this many minutes (yolo, localize; none: no limit); the default keeps a no-options run "
        "within 30 minutes on a 2-core laptop CPU, and a faster host finishes the epochs sooner", 25.0)
    val_fraction: float = doc("fraction of images held out for validation (seeded split)", 0.2)
    neck_channels: int = doc("yolo: channels of the feature-pyramid neck and the prediction heads", 64)
    center_radius: float = doc("yolo: cells within this many strides of a box centre (and inside it) are positives", 2.5)
    box_weight: float = doc("yolo: weight of the GIoU box loss", 2.0)
    channels_last: bool = doc("yolo, localize: train in channels_last memory format (1.26x faster steps measured on a "
                              "2-core AVX2 CPU, BENCHMARKS.md)", True)
    conf: float = doc("default score threshold of predict", 0.25)
    iou: float = doc("IoU threshold of non-maximum suppression", 0.5)
    max_det: int = doc("at most this many boxes per image", 100)
    flip: bool = doc("augmentation: random horizontal flips", True)
    scale_jitter: float = doc("augmentation: random zoom in/out by up to this fraction (with translation), 0: off", 0.25)
    color_jitter: float = doc("augmentation: brightness/contrast/saturation jitter strength, 0: off", 0.2)
    # --- rcnn
    proposals: int = doc("rcnn: selective-search proposals kept per image", 300)
    crop_size: int = doc("rcnn: each proposal is warped to this square size before the CNN", 96)
    negatives: int = doc("rcnn: background proposals (IoU < 0.3 with every box) per image for the classifiers", 24)
    hard_rounds: int = doc("rcnn: rounds of hard-negative mining", 2)
    svm_c: float = doc("rcnn: inverse regularisation strength of the per-class linear classifiers", 0.1)

    def validate(self) -> None:
        require(self, "image_size", lambda v: v >= 32 and v % 32 == 0, "be a multiple of 32, at least 32", got=True)
        require(self, "val_fraction", lambda v: 0.0 <= v < 1.0, "be in [0, 1)", got=True)
        require(self, ("epochs", "batch_size"), lambda v: v >= 1, "be at least 1")
        require(self, "freeze_stages", lambda v: v >= 0, "be 0 or more", got=True)
        require(self, "time_budget", lambda v: v > 0, "be a positive number of minutes", got=True)
        require(self, "conf", lambda v: 0.0 <= v <= 1.0, "be in [0, 1]")
        require(self, "iou", lambda v: 0.0 < v <= 1.0, "be in (0, 1]")

    def stages_to_freeze(self) -> int:
        """``freeze_stages`` with ``None`` resolved: 3 for yolo over trained weights, else 0 (see the field)."""
        if self.freeze_stages is not None:
            return int(self.freeze_stages)
        return 3 if self.method == "yolo" and str(self.weights).lower() != "none" else 0
