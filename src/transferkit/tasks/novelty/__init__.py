"""Novelty detection: an autoencoder's reconstruction error, or distance to normal images in an embedding space.

>>> from transferkit.tasks.novelty import NoveltyConfig, fit, score, evaluate
>>> run = fit(NoveltyConfig(normal_classes=("0", "1", "2", "3", "4")), "digits", "runs/nov")
>>> score(run, ["img.png"])          # [{"path", "score", "novel"}]
>>> evaluate(run, "digits")["roc_auc"]

The detector's network is an autoencoder run (``RUN_DIR/autoencoder/model``,
loaded by the autoencoder task's ``build_model``) or an embedding index, so
this package saves no model directory of its own and has no ``build_model``.
"""

from __future__ import annotations

from typing import Any

from transferkit.tasks.novelty.config import NoveltyConfig


def fit(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.novelty.detector.fit`."""
    from transferkit.tasks.novelty.detector import fit as _fit

    return _fit(*args, **kwargs)


def score(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.novelty.detector.score`."""
    from transferkit.tasks.novelty.detector import score as _score

    return _score(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.novelty.detector.evaluate`."""
    from transferkit.tasks.novelty.detector import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["NoveltyConfig", "evaluate", "fit", "score"]
