"""FID and KID on features that work offline.

KID is torchmetrics' ``KernelInceptionDistance``, FID the same formula as torchmetrics'
``FrechetInceptionDistance`` with a faster symmetric square root (see :func:`fid`; the tests check
both give the same value).  The features are computed first (so the real images' features are
computed once and reused for every set of samples) and handed to torchmetrics through an identity
"network".  The
default feature network is the bundled EfficientNet-Lite0 (ImageNet weights installed with pip); any
backbone name or model directory works, e.g. a LeNet-5 trained on the digits
(``transferkit arch compare lenet5 --data mnist/ --out runs/lenet`` -> ``runs/lenet/lenet5/model``).
Figures on these features are not comparable with Inception-FID figures from papers.

Also here: L1, PSNR and SSIM of translations against their targets (pix2pix).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

PRETTY = {"efficientnet_lite0": "EfficientNet-Lite0", "efficientnet_lite1": "EfficientNet-Lite1",
          "efficientnet_lite2": "EfficientNet-Lite2", "lenet5": "LeNet-5"}


class FeatureNet:
    """A frozen network turning images (N, C, H, W) in [-1, 1] into feature vectors (N, D).

    Args:
        spec: a backbone name (``transferkit models``) or a model/run directory.
    """

    def __init__(self, spec: str | os.PathLike = "efficientnet_lite0", size: int | None = None):
        from transferkit.core.modeldir import find_model_dir, load

        text = os.fspath(spec)
        found = find_model_dir(text) if Path(text).exists() else None
        if found is not None:
            tm = load(found)
            self.module, pre = tm.module, tm.preprocessing
            arch = str(tm.config.get("architecture", "?"))
            self.name = f"{PRETTY.get(arch, arch)} from {found}"
        else:
            from transferkit.core.backbones import resolve

            r = resolve(text)
            self.module, pre = r.module, r.preprocessing
            self.name = PRETTY.get(r.name, r.name)
        self.module.eval()
        self.spec = text
        self.size = (int(pre.input_size[1]), int(pre.input_size[2])) if not size else (int(size), int(size))
        if size:
            self.name += f" at {size} px"
        self.mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        inner = getattr(m, "net", None)
        if not hasattr(m, "forward_features") and not hasattr(m, "embed") and inner is not None:
            if getattr(m, "num_features", None) is not None or hasattr(inner, "forward_features"):
                x = x.mean(dim=1, keepdim=True) if x.shape[1] != 1 else x  # the rgb_to_grey adapter
                m = inner
        if hasattr(m, "embed") or hasattr(m, "forward_head"):
            from transferkit.core.inference import embed

            return embed(m, x)
        return m.forward_features(x).flatten(1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        import torch.nn.functional as F

        out = []
        for i in range(0, len(images), batch_size):
            x = (images[i : i + batch_size].float() + 1) / 2  # [0, 1]
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            if tuple(x.shape[-2:]) != self.size:
                x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
            c = self.mean.shape[1]
            x = (x[:, :c] - self.mean) / self.std if c <= 3 else x
            out.append(self._embed(x).float().flatten(1))
        return torch.cat(out).double()


def describe(features: FeatureNet | str) -> str:
    name = features.name if isinstance(features, FeatureNet) else PRETTY.get(str(features), str(features))
    return f"{name} features"


class _Given(torch.nn.Module):
    """The identity, posing as torchmetrics' feature network over precomputed features."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _cov_factor(x: torch.Tensor) -> torch.Tensor:
    """A with A^T A = the unbiased covariance of the rows of ``x`` (N, D); min(N, D) rows."""
    a = (x - x.mean(0)) / max(1, len(x) - 1) ** 0.5
    if a.shape[0] > a.shape[1]:
        a = torch.linalg.qr(a, mode="r").R  # (D, D), same A^T A
    return a


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (N, D).

    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), with unbiased covariances, as torchmetrics'
    ``FrechetInceptionDistance``.  With S1 = A^T A and S2 = B^T B, the non-zero eigenvalues of S1 S2 are
    those of (A B^T)(A B^T)^T, so tr(sqrt(S1 S2)) is the sum of the singular values of A B^T: exact, and
    far cheaper than a D x D eigendecomposition when there are fewer samples than features (1280 for
    EfficientNet-Lite0).  The tests check it against torchmetrics' value (:func:`fid_torchmetrics`).
    """
    x, y = real.double(), fake.double()
    a, b = _cov_factor(x), _cov_factor(y)
    trace_sqrt = torch.linalg.svdvals(a @ b.T).sum()
    dist = (x.mean(0) - y.mean(0)).square().sum() + a.square().sum() + b.square().sum() - 2 * trace_sqrt
    return max(0.0, float(dist))


def fid_torchmetrics(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID by torchmetrics' ``FrechetInceptionDistance`` on the given features (the reference for :func:`fid`)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]), normalize=True, sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return max(0.0, float(metric.compute()))


def kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (mean, std over subsets) between two feature sets (torchmetrics)."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    warnings.filterwarnings("ignore", message=r".*will save all extracted features.*")

    n = min(len(real), len(fake))
    subset = min(1000, max(2, n // 2))  # subsets of half the samples, so that they differ and the std means something
    torch.manual_seed(seed)
    metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=20 if n > 50 else 10, subset_size=subset,
                                     normalize=True, sync_on_compute=False)  # rank 0 alone measures, under DDP
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    mean, std = metric.compute()
    return float(mean), float(std)


def fid_report(real_f: torch.Tensor, fake_f: torch.Tensor, seed: int = 0, paired: bool = False) -> dict[str, Any]:
    """FID and KID of generated features against real ones, with the real-versus-real floor.

    The real features are cut into two halves; the floor is FID(half 1, half 2), and the generated set
    is compared with half 1 using as many samples as half 2, so both figures have the same sample sizes.
    ``paired`` (pix2pix): ``fake_f[i]`` is the translation whose target is ``real_f[i]``; the generated set is
    then the translations of half 2's inputs, exactly the images the floor puts in place of them.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(real_f), generator=g)
    half = len(real_f) // 2
    r1, r2 = real_f[perm[:half]], real_f[perm[half : 2 * half]]
    f = fake_f[perm[half : 2 * half]] if paired else fake_f[:half]
    k_mean, k_std = kid(r1, f, seed)
    return {"fid": fid(r1, f), "kid": k_mean, "kid_std": k_std, "fid_floor": fid(r1, r2),
            "kid_floor": kid(r1, r2, seed)[0], "n_real": int(half), "n_fake": int(len(f))}


def pixel_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """L1 (on [0, 1] pixels), PSNR (dB) and SSIM of translations against targets, both (N, C, H, W) in [-1, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    p, t = (pred.float() + 1) / 2, (target.float() + 1) / 2
    p, t = p.clamp(0, 1), t.clamp(0, 1)
    kernel = 7 if min(p.shape[-2:]) < 32 else 11
    return {
        "l1": float((p - t).abs().mean()),
        "psnr": float(peak_signal_noise_ratio(p, t, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(p, t, data_range=1.0, kernel_size=kernel)),
    }


def confident_share(probs: np.ndarray, threshold: float = 0.9) -> float:
    """Share of rows whose top class probability exceeds ``threshold``."""
    return float((probs.max(axis=1) > threshold).mean())
