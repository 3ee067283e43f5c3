"""Siamese networks and one-shot learning: pair / contrastive / triplet training, N-way k-shot evaluation, verification.

>>> from transferkit.tasks.siamese import SiameseConfig, fit, evaluate, evaluate_runs, calibrate, verify
>>> run = fit(SiameseConfig(), "images_background_small1.zip", "runs/siamese")   # report.html, model/
>>> evaluate(run, "images_background_small2.zip", way=20, shot=1)["accuracy"]    # unseen classes only
>>> calibrate(run, "held_out_people/")["threshold"]                              # stored in the model
>>> verify(run, "gallery/", ["visitor.jpg"])[0]["match"]

Modules: ``config`` (SiameseConfig), ``data`` (image sets, class-balanced
batches, balanced pairs, Koch's affine distortions), ``model`` (SiameseNet:
one shared encoder, Koch's pair head), ``losses`` (injected objectives over
pytorch-metric-learning), ``module`` (LightningModule), ``episodes``
(episodes, confidence intervals, Lake et al.'s runs format), ``matching``
(how a one-shot query is scored: mean embeddings, aligned views, local
features), ``thresholds``
(EER / FAR thresholds), ``oneshot`` (eval, runs, calibrate, verify),
``train`` (``fit``), ``report``.
"""

from __future__ import annotations

from transferkit.core.lazy import lazy_exports
from transferkit.tasks.siamese.config import LOSSES, SiameseConfig

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_model": "model",
    "fit": "train",
    "evaluate": "oneshot",
    "evaluate_runs": "oneshot",
    "calibrate": "oneshot",
    "verify": "oneshot",
})

__all__ = ["LOSSES", "SiameseConfig", "build_model", "calibrate", "evaluate", "evaluate_runs", "fit", "verify"]
