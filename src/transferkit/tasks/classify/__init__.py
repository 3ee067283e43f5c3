"""Transfer learning for image classification: features, freeze, finetune and gradual strategies.

>>> from transferkit.tasks.classify import ClassifyConfig, fit, evaluate
>>> run = fit(ClassifyConfig(strategy="features"), "photos/", "runs/cls")     # run folder with report.html
>>> evaluate(run, "more_photos/")["accuracy"]
>>> transferkit.predict(["x.jpg"], model=run)                                # uses run/model, class names

Modules: ``config`` (ClassifyConfig), ``model`` (Classifier = backbone + head),
``data`` (decode once, augment in memory), ``module`` (LightningModule and
schedules), ``features`` (the fixed-feature-extractor strategy), ``train``
(``fit``), ``evaluation`` (``evaluate``), ``report``.
"""

from __future__ import annotations

from typing import Any

from transferkit.tasks.classify.config import STRATEGIES, ClassifyConfig


def build_model(config: dict[str, Any]):
    """The untrained network of a classifier model directory (used by ``transferkit.load``)."""
    from transferkit.tasks.classify.model import build_model as _build

    return _build(config)


def fit(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.classify.train.fit`."""
    from transferkit.tasks.classify.train import fit as _fit

    return _fit(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.classify.evaluation.evaluate`."""
    from transferkit.tasks.classify.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["STRATEGIES", "ClassifyConfig", "build_model", "fit", "evaluate"]
