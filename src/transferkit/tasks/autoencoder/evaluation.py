"""Reconstruction metrics, and the PCA baseline with as many components as the autoencoder has codes.

The PCA is fitted on the run's training rows when the run is made and saved in
``pca.npz``, so ``eval`` compares both on exactly the same images.  For
``--colorize`` the linear baseline is principal-component regression: PCA of
the grey inputs to ``latent`` components, then least squares to the colour
image (the linear model with the same bottleneck).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.core.modeldir import atomic_write_bytes
from transferkit.errors import TransferkitError

PCA_FILE = "pca.npz"


class LinearBaseline:
    """PCA reconstruction (or PCA regression for colourisation) on flattened images in [0, 1]."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, coef: np.ndarray | None = None,
                 intercept: np.ndarray | None = None):
        self.mean, self.components = mean, components  # (D,), (k, D)
        self.coef, self.intercept = coef, intercept  # regression (k, D_out), (D_out,) or None

    @classmethod
    def fit(cls, x_in: np.ndarray, y: np.ndarray | None, k: int, seed: int = 0) -> "LinearBaseline":
        """x_in: (N, D) inputs; y: (N, D_out) colour targets for regression, or None for plain PCA."""
        from sklearn.decomposition import PCA

        k = max(1, min(k, x_in.shape[0], x_in.shape[1]))
        pca = PCA(n_components=k, svd_solver="auto", random_state=seed).fit(x_in)
        mean, comps = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)
        if y is None:
            return cls(mean, comps)
        codes = (x_in - mean) @ comps.T  # (N, k)
        design = np.hstack([codes, np.ones((len(codes), 1), dtype=codes.dtype)])
        sol, *_ = np.linalg.lstsq(design, y, rcond=None)  # (k+1, D_out)
        return cls(mean, comps, sol[:-1].astype(np.float32), sol[-1].astype(np.float32))

    def predict(self, x_in: np.ndarray) -> np.ndarray:
        codes = (x_in - self.mean) @ self.components.T
        if self.coef is None:
            return np.clip(codes @ self.components + self.mean, 0, 1)
        return np.clip(codes @ self.coef + self.intercept, 0, 1)

    def save(self, path: str | os.PathLike) -> Path:
        buf = io.BytesIO()
        arrays = {"mean": self.mean, "components": self.components}
        if self.coef is not None:
            arrays.update(coef=self.coef, intercept=self.intercept)
        np.savez(buf, **arrays)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LinearBaseline":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mean"], z["components"], z["coef"] if "coef" in z else None,
                           z["intercept"] if "intercept" in z else None)
        except (OSError, KeyError, ValueError) as err:
            raise TransferkitError(f"{path} is not a PCA baseline file ({err}).") from None


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def reconstruct(module: Any, x, batch: int = 512, noise: tuple[str, float] | None = None, colorize: bool = False,
                seed: int = 0) -> tuple[Any, Any]:
    """Run the autoencoder over x (N, C, H, W) in [0, 1]: returns (network inputs, outputs) as tensors.

    ``noise`` = (kind, level) corrupts the inputs with a seeded generator (the
    same corruption for every call with the same seed).
    """
    import torch

    from transferkit.tasks.autoencoder.data import grey_of
    from transferkit.tasks.autoencoder.noise import corrupt

    gen = torch.Generator().manual_seed(seed)
    ins, outs = [], []
    module.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            if colorize:
                xb = grey_of(xb)
            if noise is not None:
                xb = corrupt(xb, noise[0], noise[1], gen)
            ins.append(xb)
            outs.append(module(xb))
    return torch.cat(ins), torch.cat(outs)


def metrics(module: Any, x, model_config: dict[str, Any], baseline: LinearBaseline | None) -> dict[str, Any]:
    """The numbers `autoencoder eval` prints, on clean images x (N, C, H, W) in [0, 1].

    Keys: ``mse`` (per pixel, clean input), ``pca_mse``, ``psnr``, then
    ``ratio`` (mse / pca_mse), ``mean_image_mse`` (the trivial baseline), ``n``,
    and for denoising ``denoised_mse`` (output of the noisy input vs clean) and
    ``noisy_mse`` (noisy input vs clean).
    """
    import torch

    colorize = bool(model_config.get("colorize"))
    target = x
    _, out = reconstruct(module, x, colorize=colorize)
    mse = float(torch.mean((out - target) ** 2))
    res: dict[str, Any] = {"mse": mse, "pca_mse": None, "psnr": psnr(mse)}
    flat_t = target.flatten(1).numpy()
    if baseline is not None:
        from transferkit.tasks.autoencoder.data import grey_of

        x_in = (grey_of(x) if colorize else x).flatten(1).numpy()
        res["pca_mse"] = float(np.mean((baseline.predict(x_in) - flat_t) ** 2))
        res["ratio"] = mse / res["pca_mse"] if res["pca_mse"] > 0 else None
        res["pca_psnr"] = psnr(res["pca_mse"])
    mean_img = baseline.mean if (baseline is not None and not colorize) else flat_t.mean(axis=0)
    res["mean_image_mse"] = float(np.mean((flat_t - mean_img) ** 2))
    noise = model_config.get("noise")
    if model_config.get("kind") == "denoising" and noise:
        noisy, den = reconstruct(module, x, noise=(noise["kind"], noise["level"]), colorize=colorize)
        res["denoised_mse"] = float(torch.mean((den - target) ** 2))
        if not colorize:
            res["noisy_mse"] = float(torch.mean((noisy - target) ** 2))
    res["n"] = int(len(x))
    return res
