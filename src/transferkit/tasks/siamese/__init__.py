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

from typing import Any

from transferkit.tasks.siamese.config import LOSSES, SiameseConfig


def build_model(config: dict[str, Any]):
    """The untrained network of a siamese model directory (used by ``transferkit.load``)."""
    from transferkit.tasks.siamese.model import build_model as _build

    return _build(config)


def fit(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.siamese.train.fit`."""
    from transferkit.tasks.siamese.train import fit as _fit

    return _fit(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.siamese.oneshot.evaluate`."""
    from transferkit.tasks.siamese.oneshot import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def evaluate_runs(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.siamese.oneshot.evaluate_runs`."""
    from transferkit.tasks.siamese.oneshot import evaluate_runs as _runs

    return _runs(*args, **kwargs)


def calibrate(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.siamese.oneshot.calibrate`."""
    from transferkit.tasks.siamese.oneshot import calibrate as _calibrate

    return _calibrate(*args, **kwargs)


def verify(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.siamese.oneshot.verify`."""
    from transferkit.tasks.siamese.oneshot import verify as _verify

    return _verify(*args, **kwargs)


__all__ = ["LOSSES", "SiameseConfig", "build_model", "calibrate", "evaluate", "evaluate_runs", "fit", "verify"]
