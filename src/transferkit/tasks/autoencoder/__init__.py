"""Autoencoders: dense, conv, denoising, sparse and stacked (greedy layer-wise), with latent pictures.

>>> from transferkit.tasks.autoencoder import AEConfig, fit, evaluate, decode, finetune
>>> run = fit(AEConfig(kind="conv", latent=2), "digits", "runs/ae")      # run folder with report.html
>>> evaluate(run, "digits")                                              # {"mse", "pca_mse", "psnr", ...}
>>> decode(run, "0.5,-1", "z.png")                                       # one point of the latent plane
>>> finetune(run, "digits", "runs/cls", FinetuneConfig(num_labelled=100))

Modules: ``models`` (networks), ``noise`` (corruptions), ``module``
(LightningModules), ``data``, ``evaluation`` (metrics, PCA baseline),
``pictures``, ``train`` (the functions above).
"""

from __future__ import annotations

from typing import Any

from transferkit.tasks.autoencoder.config import KINDS, AEConfig, FinetuneConfig


def build_model(config: dict[str, Any]):
    """The untrained network of an autoencoder model directory (used by ``transferkit.load``)."""
    from transferkit.tasks.autoencoder.train import build_network

    return build_network(config)


def fit(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.autoencoder.train.fit`."""
    from transferkit.tasks.autoencoder.train import fit as _fit

    return _fit(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.autoencoder.train.evaluate`."""
    from transferkit.tasks.autoencoder.train import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def decode(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.autoencoder.train.decode`."""
    from transferkit.tasks.autoencoder.train import decode as _decode

    return _decode(*args, **kwargs)


def finetune(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.autoencoder.train.finetune`."""
    from transferkit.tasks.autoencoder.train import finetune as _finetune

    return _finetune(*args, **kwargs)


__all__ = ["KINDS", "AEConfig", "FinetuneConfig", "build_model", "fit", "evaluate", "decode", "finetune"]
