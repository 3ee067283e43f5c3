"""GANs: DCGAN (optionally class-conditional) and pix2pix image-to-image translation, with offline FID/KID.

>>> from transferkit.tasks.gan import GANConfig, fit, evaluate, sample, translate, predict
>>> run = fit(GANConfig(kind="dcgan", epochs=5), "mnist/", "runs/gan")       # run folder with report.html
>>> sample(run, n=64, out="grid.png")                                        # one grid of samples
>>> evaluate(run, "mnist/")                     # {"fid", "kid", "fid_floor", "n_real", "n_fake", ...}
>>> fit(GANConfig(kind="pix2pix", edges=True), "photos/", "runs/p2p")        # edges -> photo
>>> translate("runs/p2p", ["photo.jpg"], "out/")

Modules: ``models`` (networks, with tensor shapes), ``module`` (LightningModules, manual optimisation),
``data`` (readers, pairs, edges, jitter), ``metrics`` (FID/KID on offline features; L1/PSNR/SSIM),
``pictures`` (grids), ``train`` (the functions above).
"""

from __future__ import annotations

from transferkit.core.lazy import lazy_exports
from transferkit.tasks.gan.config import KINDS, GANConfig

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_model": "models:build_generator",
    "fit": "train",
    "evaluate": "train",
    "sample": "train",
    "translate": "train",
    "predict": "train",
})

__all__ = ["KINDS", "GANConfig", "build_model", "fit", "evaluate", "sample", "translate", "predict"]
