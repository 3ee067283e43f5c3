"""Novelty detection: an autoencoder's reconstruction error, or distance to normal images in an embedding space.

>>> from transferkit.tasks.novelty import NoveltyConfig, fit, score, evaluate
>>> run = fit(NoveltyConfig(normal_classes=("0", "1", "2", "3", "4")), "digits", "runs/nov")
>>> score(run, ["img.png"])          # [{"path", "score", "novel"}]
>>> evaluate(run, "digits")["roc_auc"]
>>> Detector(run).load()             # the fitted detector, loaded once (what `transferkit serve` uses)

The detector's network is an autoencoder run (``RUN_DIR/autoencoder/model``,
loaded by the autoencoder task's ``build_model``) or an embedding index, so
this package saves no model directory of its own and has no ``build_model``.
"""

from __future__ import annotations

from transferkit.core.lazy import lazy_exports
from transferkit.tasks.novelty.config import NoveltyConfig

__getattr__, __dir__ = lazy_exports(__name__, {"fit": "detector", "score": "detector", "evaluate": "detector",
                                               "Detector": "detector"})

__all__ = ["Detector", "NoveltyConfig", "evaluate", "fit", "score"]
