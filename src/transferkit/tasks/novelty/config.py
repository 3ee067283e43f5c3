"""Options of `novelty fit`: the detector's own, plus every `autoencoder fit` option for the reconstruction method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transferkit.core.config import doc
from transferkit.errors import TransferkitError
from transferkit.tasks.autoencoder.config import AEConfig


@dataclass
class NoveltyConfig(AEConfig):
    """How `novelty fit` learns what normal looks like and calibrates its threshold."""

    method: Literal["reconstruction", "embedding"] = doc(
        "reconstruction: an autoencoder's reconstruction error; embedding: cosine distance to the nearest normal "
        "images in a backbone's (or autoencoder's) embedding space", "reconstruction")
    percentile: float = doc("threshold = this percentile of the scores of held-out normal images", 99.0)
    normal_classes: tuple[str, ...] = doc(
        "classes of DATA that are normal (e.g. 0,1,2,3,4 for digits); default: all of DATA", ())
    model: str = doc("embedding: backbone name or autoencoder run directory", "efficientnet_lite0")
    neighbours: int = doc("embedding: score = 1 - mean cosine similarity to this many nearest normal images", 5)
    latent: int = doc("code size of the autoencoder (small codes reconstruct the unfamiliar badly: good here)", 16)
    val_fraction: float = doc("held-out part of the normal images, used to calibrate the threshold", 0.2)

    def validate(self) -> None:
        super().validate()
        if not 0 < self.percentile <= 100:
            raise TransferkitError(f"--percentile must be in (0, 100] (got {self.percentile}).")
        if self.val_fraction <= 0:
            raise TransferkitError("--val-fraction must be above 0: the threshold is calibrated on held-out normal images.")
        if self.neighbours < 1:
            raise TransferkitError("--neighbours must be at least 1.")
        if self.colorize:
            raise TransferkitError("--colorize does not apply to novelty detection.")
