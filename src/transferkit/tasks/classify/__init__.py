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

from transferkit.core.lazy import lazy_exports
from transferkit.tasks.classify.config import STRATEGIES, ClassifyConfig

__getattr__, __dir__ = lazy_exports(__name__, {"build_model": "model", "fit": "train", "evaluate": "evaluation"})

__all__ = ["STRATEGIES", "ClassifyConfig", "build_model", "fit", "evaluate"]
