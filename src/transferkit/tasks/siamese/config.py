"""``SiameseConfig``: every option of ``transferkit siamese fit``, with its documented default.

Flags are generated from the fields (``per_class`` -> ``--per-class``); the
resolved config is saved as ``RUN_DIR/config.yaml`` and ``--config FILE``
reproduces a run.  The defaults are the configuration measured in
BENCHMARKS.md ("Siamese one-shot learning"): trained on Omniglot's
``images_background_small1`` on a 2-core CPU within the time budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from transferkit.core.config import doc
from transferkit.core.engine import TrainConfig
from transferkit.errors import TransferkitError

LOSSES = ("pair", "contrastive", "triplet", "supcon", "multisimilarity")
DEFAULT_MARGINS = {"pair": 0.0, "contrastive": 0.5, "triplet": 0.2, "supcon": 0.0, "multisimilarity": 0.1}


@dataclass
class SiameseConfig(TrainConfig):
    """Options of a Siamese (metric-learning) run."""

    # --precision auto trains in bf16 on CPUs with native bf16: measured faster at equal one-shot accuracy
    # (benchmarks/cpu_precision.py, BENCHMARKS.md "CPU training precision"); fp32 on other CPUs
    CPU_BF16_MEASURED: ClassVar[bool] = True

    # TrainConfig's fields with this task's defaults (an epoch is --steps-per-epoch batches)
    epochs: int = doc("maximum number of epochs of --steps-per-epoch steps", 50)
    batch_size: int = doc("images per batch (--per-class images of batch_size/per_class classes)", 128)
    lr: float = doc("peak learning rate (AdamW)", 2e-3)

    loss: Literal["pair", "contrastive", "triplet", "supcon", "multisimilarity"] = doc(
        "pair: Koch et al.'s sigmoid on the weighted L1 distance, binary cross-entropy on balanced same/different "
        "pairs; contrastive: pull same pairs together, push different ones beyond --margin; triplet: anchor closer "
        "to its positive than to its negative by --margin; supcon: supervised contrastive (each image's same-class "
        "images against all others of the batch, softmax at --temperature); multisimilarity: Wang et al.'s "
        "multi-similarity loss and miner (--margin is the miner's epsilon).  All but pair work on L2-normalised "
        "embeddings; contrastive and triplet with online --mining",
        "supcon",
    )
    margin: Optional[float] = doc("contrastive/triplet margin on the Euclidean distance of unit embeddings, "
                                  "multisimilarity's mining epsilon (None: 0.5 contrastive, 0.2 triplet, "
                                  "0.1 multisimilarity)", None)
    temperature: float = doc("supcon: softmax temperature of the cosine similarities", 0.1)
    mining: Literal["semihard", "hard", "all"] = doc(
        "contrastive, triplet (and pair: hard) losses' online mining in each batch: semihard (triplets: negative farther than the positive but within the margin; "
        "pairs: the pairs that still violate a margin), hard (the hardest positive and negative of each anchor), "
        "or all (every pair / triplet)", "semihard")
    encoder: str = doc("small-cnn (Koch et al.'s CNN, trained from scratch), or a pretrained backbone "
                       "(`transferkit models`, a timm name or a registered architecture)", "small-cnn")
    weights: str = doc("pretrained encoders: pretrained (offline resolution), none (random init), or a weights file", "pretrained")
    embedding: int = doc("embedding size D (the twin's output)", 128)
    width: float = doc("small-cnn: channel width multiplier (1: 32,64,64,128; 2: Koch's 64,128,128,256)", 1.0)
    image_size: Optional[int] = doc("input side in pixels (None: 52 for small-cnn, the weights' own for pretrained)", None)
    grey: Optional[bool] = doc("read images as grey (None: grey for Omniglot or all-grey data, else colour)", None)
    crop_ink: Optional[bool] = doc("grey drawings (characters, signatures): crop each image to the square around its "
                                   "ink before resizing, so where and how large it was drawn does not matter (saved "
                                   "with the model; None: on for Omniglot)", None)
    # --- freezing (pretrained encoders), as in `classify`
    freeze_to: Optional[int] = doc(
        "pretrained encoders: bottom stages kept frozen (0: none; None: the whole backbone, only the projection "
        "trains; negative: all but the top -N)", 0)
    layer_decay: Optional[float] = doc("per-layer learning rates: each stage below the top gets this times the rate "
                                       "of the one above (None: the same rate)", 0.7)
    lr_range: Optional[str] = doc("per-layer learning rates as lo:hi from the bottom stage to the head "
                                  "(overrides --lr and --layer-decay)", None)
    # --- sampling
    per_class: int = doc("images of each class in a batch (batch = batch_size / per_class classes)", 4)
    steps_per_epoch: int = doc("optimiser steps per epoch", 200)
    alphabets_per_batch: int = doc("Omniglot: draw each batch's classes from this many random alphabets, so most "
                                   "negatives are same-alphabet characters, as in one-shot runs (0: from all classes)",
                                   0)
    rotations: Optional[bool] = doc("also train on each class rotated by 90/180/270 degrees as three new classes "
                                    "(None: on for Omniglot characters, off otherwise)", None)
    mirror: bool = doc("also train on the left-right mirror image of each class (and of its rotations) as new "
                       "classes", False)
    val_classes: float = doc("fraction of the classes held out for validation (one-shot accuracy per epoch, "
                             "best checkpoint, first verification threshold); 0: none", 0.1)
    val_way: int = doc("validation episodes: N of N-way one-shot (capped at the number of held-out classes)", 20)
    tta: int = doc("test-time augmentation, saved with the model: eval, calibrate and verify embed each image as "
                   "the mean over itself and this many fixed, seeded distortions of it (drawn from training's affine "
                   "ranges; 0: off)", 32)
    center: bool = doc("one-shot episodes and runs (saved with the model; metric losses): compare embeddings after "
                       "subtracting the mean embedding of the support set, i.e. what all candidates share, such as "
                       "their alphabet's style", True)
    align_views: bool = doc("one-shot episodes and runs (saved with the model; metric losses with --tta): score a "
                            "query against a candidate by the mean of the best-aligned pairs of their test-time views "
                            "(the 1 + tta highest of the (1 + tta)^2 view similarities) instead of their mean "
                            "embeddings", True)
    local_match: Optional[float] = doc("one-shot episodes and runs (saved with the model; metric losses): weight of the "
                                       "local-feature match (each cell of the query's last feature map to its most "
                                       "similar cell of the candidate's, DN4-style) added to the embedding score, both "
                                       "standardised over the candidates (None: 0.3 for small-cnn, 0 = off for "
                                       "pretrained backbones, whose maps are large and where it is unmeasured)", None)
    # --- Koch's affine distortions
    rotate: float = doc("augmentation: random rotation up to +-this many degrees", 10.0)
    shear: float = doc("augmentation: random shear up to +-this (Koch: 0.3)", 0.3)
    scale: tuple[float, ...] = doc("augmentation: random scale range per axis", (0.8, 1.2))
    translate: float = doc("augmentation: random translation up to this fraction of the side", 0.1)
    elastic: float = doc("augmentation: smooth random (elastic) displacement of the strokes up to this fraction of "
                         "the side (0: off)", 0.06)
    augment_p: float = doc("augmentation: probability of each distortion component (0: no augmentation)", 0.5)
    # --- optimisation
    weight_decay: float = doc("AdamW weight decay (not on biases and norm weights)", 1e-4)
    warmup_steps: int = doc("linear learning-rate warm-up steps, then cosine annealing to 1 percent of the peak", 100)
    ema: float = doc("exponential moving average of the weights after the warm-up (Lightning's EMAWeightAveraging): "
                     "validation, checkpoints and the saved model use the averaged weights; this is the decay per "
                     "step (0: off)", 0.0)
    time_budget: Optional[float] = doc("stop after this many minutes of training; the learning-rate schedule "
                                       "anneals by whichever comes first, time or steps (25: the default run ends well inside half an "
                                       "hour on a 2-core CPU; None: no limit)", 25.0)
    channels_last: bool = doc("channels_last memory format (faster convolutions on most CPUs and GPUs)", True)

    def resolved_local_match(self) -> float:
        if self.local_match is not None:
            return float(self.local_match)
        return 0.3 if self.encoder == "small-cnn" else 0.0

    def resolved_margin(self) -> float:
        return DEFAULT_MARGINS[self.loss] if self.margin is None else float(self.margin)

    def validate(self) -> None:
        """Clear errors for inconsistent options (called by ``core.config.resolve``)."""
        if self.epochs < 1:
            raise TransferkitError(f"--epochs must be at least 1 (got {self.epochs}).")
        if self.per_class < 2:
            raise TransferkitError(f"--per-class must be at least 2: a batch needs same-class pairs (got {self.per_class}).")
        if self.batch_size < 2 * self.per_class:
            raise TransferkitError(
                f"--batch-size ({self.batch_size}) must hold at least two classes of --per-class {self.per_class} images.")
        if self.alphabets_per_batch < 0:
            raise TransferkitError(f"--alphabets-per-batch must be >= 0 (got {self.alphabets_per_batch}).")
        if self.steps_per_epoch < 1:
            raise TransferkitError(f"--steps-per-epoch must be at least 1 (got {self.steps_per_epoch}).")
        if not self.lr > 0:
            raise TransferkitError(f"--lr must be positive (got {self.lr}).")
        if self.embedding < 2:
            raise TransferkitError(f"--embedding must be at least 2 (got {self.embedding}).")
        if not self.width > 0:
            raise TransferkitError(f"--width must be positive (got {self.width}).")
        if not self.temperature > 0:
            raise TransferkitError(f"--temperature must be positive (got {self.temperature}).")
        if self.margin is not None and self.margin < 0:
            raise TransferkitError(f"--margin must be >= 0 (got {self.margin}).")
        if not 0 <= self.val_classes < 1:
            raise TransferkitError(f"--val-classes must be in [0, 1) (got {self.val_classes}).")
        if self.tta < 0:
            raise TransferkitError(f"--tta must be >= 0 (got {self.tta}).")
        if self.local_match is not None and not self.local_match >= 0:
            raise TransferkitError(f"--local-match must be >= 0 (got {self.local_match}).")
        if self.val_way < 2:
            raise TransferkitError(f"--val-way must be at least 2 (got {self.val_way}).")
        if self.image_size is not None and self.image_size < 16:
            raise TransferkitError(f"--image-size must be at least 16 (got {self.image_size}).")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise TransferkitError(f"--scale takes two positive numbers lo,hi with lo <= hi (got {self.scale}).")
        if not 0 <= self.elastic < 0.5:
            raise TransferkitError(f"--elastic must be in [0, 0.5) (got {self.elastic}).")
        if not 0 <= self.augment_p <= 1:
            raise TransferkitError(f"--augment-p must be in [0, 1] (got {self.augment_p}).")
        if not 0 <= self.ema < 1:
            raise TransferkitError(f"--ema must be a decay in [0, 1) (got {self.ema}).")
        if self.time_budget is not None and not self.time_budget > 0:
            raise TransferkitError(f"--time-budget must be a positive number of minutes (got {self.time_budget}).")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise TransferkitError(f"--layer-decay must be in (0, 1] (got {self.layer_decay}).")
        if self.lr_range is not None:
            from transferkit.core.freezing import parse_lr_range

            parse_lr_range(self.lr_range)
