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

from typing import Any

from transferkit.tasks.gan.config import KINDS, GANConfig


def build_model(config: dict[str, Any]):
    """The untrained generator of a GAN model directory (used by ``transferkit.load``)."""
    from transferkit.tasks.gan.models import build_generator

    return build_generator(config)


def fit(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.gan.train.fit`."""
    from transferkit.tasks.gan.train import fit as _fit

    return _fit(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.gan.train.evaluate`."""
    from transferkit.tasks.gan.train import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def sample(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.gan.train.sample`."""
    from transferkit.tasks.gan.train import sample as _sample

    return _sample(*args, **kwargs)


def translate(*args: Any, **kwargs: Any):
    """See :func:`transferkit.tasks.gan.train.translate`."""
    from transferkit.tasks.gan.train import translate as _translate

    return _translate(*args, **kwargs)


def predict(*args: Any, **kwargs: Any):
    """The serving contract: see :func:`transferkit.tasks.gan.train.predict`."""
    from transferkit.tasks.gan.train import predict as _predict

    return _predict(*args, **kwargs)


__all__ = ["KINDS", "GANConfig", "build_model", "fit", "evaluate", "sample", "translate", "predict"]
