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

from transferkit.core.lazy import lazy_exports
from transferkit.tasks.autoencoder.config import KINDS, AEConfig, FinetuneConfig

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_model": "train:build_network",
    "fit": "train",
    "evaluate": "train",
    "decode": "train",
    "finetune": "train",
})

__all__ = ["KINDS", "AEConfig", "FinetuneConfig", "build_model", "fit", "evaluate", "decode", "finetune"]
