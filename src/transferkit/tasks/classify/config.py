"""``ClassifyConfig``: every option of ``transferkit classify fit``, with its documented default.

The flags are generated from these fields (``head_layers`` -> ``--head-layers``),
the resolved config is saved as ``RUN_DIR/config.yaml`` and ``--config FILE``
reproduces a run.  Defaults were chosen by measurement on ants/bees on a 2-core
CPU (BENCHMARKS.md, "Transfer learning"); the backbone, EfficientNet-Lite2, by
repeated stratified cross-validation of the features strategy over the offline
backbones (BENCHMARKS.md, "Choosing the default backbone").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from transferkit.core.augment import AugmentConfig
from transferkit.core.config import doc
from transferkit.core.engine import TrainConfig
from transferkit.errors import TransferkitError

STRATEGIES = ("features", "freeze", "finetune", "gradual")


@dataclass
class ClassifyConfig(TrainConfig, AugmentConfig):
    """Options of an image-classifier run (transfer learning from a pretrained backbone)."""

    # training length and batch for the trained strategies (the features strategy's logistic/svm heads ignore them)
    epochs: int = doc("training epochs (freeze/finetune/gradual, and the softmax head of features)", 6)
    batch_size: int = doc("images per batch", 16)
    strategy: Literal["features", "freeze", "finetune", "gradual"] = doc(
        "features: frozen backbone, cached features + linear classifier (fastest, the default); "
        "freeze: freeze the bottom --freeze-to stages, train new dense layers; "
        "finetune: train everything with per-layer learning rates; "
        "gradual: head first, then unfreeze with lower rates",
        "features",
    )
    backbone: str = doc("pretrained backbone (any name `transferkit models` lists, a timm name, or a registered architecture)",
                        "efficientnet_lite2")
    weights: str = doc("backbone weights: pretrained (offline resolution), none (random init), or a weights file", "pretrained")
    image_size: Optional[int] = doc("input size in pixels (None: the weights' own, e.g. 224)", None)
    val_fraction: float = doc("validation fraction of the stratified seeded split, when DATA has no train/ and val/", 0.2)
    # --- features strategy
    head: Literal["logistic", "svm", "softmax"] = doc(
        "features strategy: logistic regression, linear SVM (scikit-learn), or a softmax layer trained with Lightning",
        "logistic",
    )
    head_c: float = doc("features strategy: inverse L2 strength C of the logistic/svm head, on standardised features", 0.1)
    flip_features: bool = doc("features strategy: also train on the features of mirrored training images", True)
    refit: bool = doc("features strategy (logistic/svm): after measuring on the validation part, fit the saved model's "
                      "head on training + validation images", True)
    cv: int = doc("features strategy (logistic/svm head): K of the repeated stratified K-fold cross-validation on all "
                  "labelled images (train + validation), reported as mean and spread next to the single split's "
                  "accuracy; 0 turns it off; other strategies do not run it (one training per fold would cost too much)", 5)
    cv_repeats: int = doc("features strategy: how many times the K-fold cross-validation is repeated with new folds", 2)
    feature_cache: bool = doc("features strategy: keep computed features in the on-disk cache ($TRANSFERKIT_CACHE/features)", True)
    # --- the new head of the trained strategies
    head_layers: tuple[int, ...] = doc("hidden dense layers of the new head, e.g. 512,256 (empty: a single linear layer)", ())
    dropout: float = doc("dropout before each dense layer of the head", 0.2)
    # --- freezing and learning rates
    freeze_to: Optional[int] = doc(
        "freeze strategy: bottom backbone stages kept frozen (None: the whole backbone; negative: all but the top -N)", None)
    layer_decay: Optional[float] = doc(
        "per-layer learning rates: each stage below the head gets this times the rate of the one above (None: same rate)", 0.7)
    lr_range: Optional[str] = doc("per-layer learning rates as lo:hi, spread geometrically from the bottom stage to the head "
                                  "(overrides --lr and --layer-decay)", None)
    head_epochs: int = doc("gradual strategy: epochs training only the head before unfreezing", 2)
    unfreeze: Literal["all", "stage"] = doc("gradual strategy: unfreeze everything at once, or one stage per --stage-epochs", "all")
    stage_epochs: int = doc("gradual strategy with --unfreeze stage: epochs between unfreezing two stages", 1)
    # --- optimisation
    optimizer: Literal["adamw", "sgd"] = doc("optimiser (sgd uses momentum 0.9, nesterov)", "adamw")
    weight_decay: float = doc("weight decay (not applied to biases and norm weights)", 0.01)
    schedule: Literal["cosine", "onecycle", "constant"] = doc(
        "learning-rate schedule per step: cosine annealing (SGDR with --restarts), one-cycle, or constant", "cosine")
    restarts: int = doc("cosine schedule: warm restarts (SGDR); 0 = one cosine decay", 0)
    warmup_epochs: float = doc("linear warm-up at the start of each cycle, in epochs", 0.0)
    label_smoothing: float = doc("label smoothing of the cross-entropy loss", 0.0)
    class_weights: bool = doc("weight the loss by inverse class frequency (balances an imbalanced training set)", False)
    # --- speed
    cache_images: bool = doc("decode every image once and keep it in memory (uint8, slightly above input size)", True)
    channels_last: bool = doc("train in channels_last memory format (faster convolutions on most CPUs and GPUs)", True)

    def validate(self) -> None:
        """Clear errors for inconsistent options (called by ``core.config.resolve``)."""
        self.validate_augment()
        if self.epochs < 1:
            raise TransferkitError(f"--epochs must be at least 1 (got {self.epochs}).")
        if self.batch_size < 1:
            raise TransferkitError(f"--batch-size must be at least 1 (got {self.batch_size}).")
        if not self.lr > 0:
            raise TransferkitError(f"--lr must be positive (got {self.lr}).")
        if not 0 < self.val_fraction < 1:
            raise TransferkitError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction}).")
        if not 0 <= self.dropout < 1:
            raise TransferkitError(f"--dropout must be in [0, 1) (got {self.dropout}).")
        if any(h < 1 for h in self.head_layers):
            raise TransferkitError("--head-layers takes positive layer widths, e.g. 512,256.")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise TransferkitError(f"--layer-decay must be in (0, 1] (got {self.layer_decay}).")
        if self.lr_range is not None:
            from transferkit.core.freezing import parse_lr_range

            parse_lr_range(self.lr_range)
        if self.cv == 1 or self.cv < 0:
            raise TransferkitError(f"--cv must be 0 (off) or at least 2 folds (got {self.cv}).")
        if self.cv_repeats < 1:
            raise TransferkitError(f"--cv-repeats must be at least 1 (got {self.cv_repeats}).")
        if self.head_c <= 0:
            raise TransferkitError(f"--head-c must be positive (got {self.head_c}).")
        if self.restarts < 0 or self.head_epochs < 0 or self.stage_epochs < 1 or self.warmup_epochs < 0:
            raise TransferkitError("--restarts, --head-epochs and --warmup-epochs must be >= 0, --stage-epochs >= 1.")
        if self.strategy == "gradual" and self.head_epochs >= self.epochs:
            raise TransferkitError(
                f"--head-epochs ({self.head_epochs}) must be fewer than --epochs ({self.epochs}) for the gradual strategy.")
        if self.image_size is not None and self.image_size < 16:
            raise TransferkitError(f"--image-size must be at least 16 (got {self.image_size}).")
        if not 0 <= self.label_smoothing < 1:
            raise TransferkitError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing}).")
