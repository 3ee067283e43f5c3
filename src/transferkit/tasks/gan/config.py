"""Options of `gan fit`, with documented defaults (every field is a flag: ``adv_weight`` -> ``--adv-weight``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from transferkit.core.config import doc
from transferkit.core.engine import TrainConfig
from transferkit.errors import TransferkitError

KINDS = ("dcgan", "pix2pix")


# What a field left at None (not given) means for each kind: the defaults the fields' help describes, chosen by
# measurement (BENCHMARKS.md).
KIND_DEFAULTS: dict[str, dict[str, object]] = {
    "dcgan": {"epochs": 100, "time_budget": 12.0, "width": 32, "blocks": 1, "loss": "hinge", "ttur": True,
              "batch_size": 16, "beta1": 0.0, "label_smoothing": 0.1, "ema": 0.999},
    "pix2pix": {"epochs": 200, "time_budget": 25.0, "width": 64, "blocks": 0, "loss": "bce", "ttur": False,
                "batch_size": 4, "beta1": 0.5, "label_smoothing": 0.1, "ema": 0.999},
}


@dataclass
class GANConfig(TrainConfig):
    """How to train a GAN (``transferkit gan fit``)."""

    kind: Literal["dcgan", "pix2pix"] = doc(
        "dcgan: random numbers -> images (Radford et al. 2016); pix2pix: image -> image translation (Isola et al. 2017)",
        "dcgan")
    image_size: Optional[int] = doc(
        "side of the square images trained on (dcgan: a multiple of 4 from 16 to 128; pix2pix: a power of two "
        "from 16 to 256); default: 28 for MNIST, 32 for other dcgan data, 64 for pix2pix", None)
    grayscale: bool = doc("read image folders as grey (default: colour; MNIST and Omniglot are always grey)", False)
    epochs: Optional[int] = doc("at most this many training epochs (default: 100 for dcgan, 200 for pix2pix, so on a "
                                "2-core CPU the time budget is what ends a default run)", None)
    max_steps: Optional[int] = doc("stop after this many generator steps (None: no limit)", None)
    time_budget: Optional[float] = doc(
        "stop training after this many minutes, the model so far kept (default: 12 for dcgan, 25 for pix2pix, so a "
        "no-options run ends within 15 / 30 minutes on a 2-core CPU, and a faster host trains more steps; 0: no limit)",
        None)
    batch_size: Optional[int] = doc("samples per batch (default: 16 for dcgan, whose smaller steps reach a lower FID "
                                    "in the same minutes than the usual 64, measured; 4 for pix2pix, whose small paired "
                                    "data sets need many steps: Isola et al. used 1 to 10)", None)
    lr: float = doc("generator learning rate (Adam)", 2e-4)
    lr_d: Optional[float] = doc("discriminator learning rate (default: --lr, or 2x --lr with --ttur: two time-scale update rule)", None)
    beta1: Optional[float] = doc("Adam beta1 for both networks (Radford et al.: 0.5); default: 0 for dcgan (with the "
                                 "hinge loss and TTUR: a lower FID and more confident digits than 0.5 in the same "
                                 "minutes, measured; the spectral-norm GAN's setting), 0.5 for pix2pix", None)
    beta2: float = doc("Adam beta2 for both networks (the spectral-norm GAN paper's 0.9 with beta1 0 gave no gain on "
                       "MNIST, measured)", 0.999)
    latent: int = doc("dcgan: size of the random vector z", 100)
    width: Optional[int] = doc("base width of both networks (ngf = ndf: the channels of the finest scale); default: "
                               "32 for dcgan (with --blocks 1: a lower FID and more confident digits than width 64 "
                               "in the same minutes, measured), 64 for pix2pix", None)
    blocks: Optional[int] = doc("dcgan: extra stride-1 3x3 convolution layers at every scale of both networks (0: "
                                "Radford et al.'s plain stack of strided layers; default 1, measured: BENCHMARKS.md)",
                                None)
    loss: Optional[Literal["bce", "hinge"]] = doc(
        "bce (the DCGAN paper's cross-entropy, non-saturating for the generator) or, dcgan only, hinge (Miyato et "
        "al.'s spectral-norm GAN: the discriminator's max(0, 1 -+ D), the generator's -D; no label smoothing); "
        "default: hinge for dcgan (with --ttur: more confident digits than bce in the same minutes, measured), bce "
        "for pix2pix", None)
    diff_augment: bool = doc("dcgan: the discriminator sees real and generated images alike randomly shifted by up to "
                             "1/8 of their side (differentiable augmentation, Zhao et al. 2020: against a "
                             "discriminator that memorises a small data set; off: worse on MNIST's 9,000 digits, "
                             "measured)", False)
    conditional: bool = doc("dcgan: class-conditional (one-hot labels into both networks), from class folders or MNIST labels", False)
    label_smoothing: Optional[float] = doc(
        "one-sided label smoothing with the bce loss: the discriminator's target for real images is 1 - this "
        "(default 0.1; 0: off; the hinge loss, dcgan's default, has none and ignores it with a warning)", None)
    spectral_norm: bool = doc("spectral normalisation of the discriminator's layers (replaces its batch norm)", True)
    ttur: Optional[bool] = doc("two time-scale update rule: the discriminator learns 2x faster unless --lr-d is given "
                               "(default: on for dcgan, measured with the hinge loss; off for pix2pix)", None)
    ema: Optional[float] = doc("decay of the exponential moving average of the generator used for samples and the saved "
                               "model (0: off; default 0.999, which gave a lower FID for both kinds at their default "
                               "settings, measured)", None)
    # pix2pix
    adv_weight: float = doc("pix2pix: weight of the conditional GAN loss (0: the plain L1-trained U-Net)", 1.0)
    l1_weight: float = doc("pix2pix: weight of the L1 loss to the target (Isola et al.: 100)", 100.0)
    direction: Literal["AtoB", "BtoA"] = doc("pix2pix: translate A into B or B into A (A/ B/ folders or side-by-side A|B images)", "AtoB")
    edges: bool = doc("pix2pix: make (edges, photo) pairs from any folder of photos with OpenCV Canny edges", False)
    jitter: bool = doc("pix2pix: random jitter (resize to 1.12x, random crop back) and mirroring of each pair", True)
    # data and outputs
    val_fraction: float = doc("held-out part of DATA (for FID over epochs, pix2pix triplets and eval)", 0.1)
    max_images: Optional[int] = doc("use at most this many images (a seeded random subset)", None)
    fid_every: int = doc("compute FID on the held-out images every N epochs (0: only at the end; needs EfficientNet-Lite0 "
                         "features: slow on a CPU)", 0)
    fid: bool = doc("compute FID/KID (and for pix2pix L1/PSNR/SSIM) on the held-out images at the end of fit", True)
    fid_samples: int = doc("images per side for the FID figures of fit (real held-out vs generated)", 500)
    features: str = doc("feature network of FID/KID: a backbone name or a model directory (e.g. a LeNet-5 trained on digits)",
                        "efficientnet_lite0")
    feature_size: Optional[int] = doc("side of the images fed to the feature network (default: its own, 224 for "
                                      "EfficientNet-Lite0; smaller is faster but gives other figures)", None)
    threads: Optional[int] = doc("CPU threads for PyTorch (None: PyTorch's default)", None)
    collapse_steps: int = doc("warn (and record) when the discriminator's loss stays below 0.01 this many steps in a row", 200)

    def _per_kind(self, field: str):
        """The field's value, or, when it is None (not given), its measured default for this kind."""
        value = getattr(self, field)
        return KIND_DEFAULTS[self.kind][field] if value is None else value

    def resolved_epochs(self) -> int:
        return self._per_kind("epochs")

    def resolved_time_budget(self) -> float | None:
        """Minutes of training (None: no limit)."""
        budget = float(self._per_kind("time_budget"))
        return budget if budget > 0 else None

    def resolved_width(self) -> int:
        return self._per_kind("width")

    def resolved_blocks(self) -> int:
        return self._per_kind("blocks")

    def resolved_loss(self) -> str:
        return self._per_kind("loss")

    def resolved_ttur(self) -> bool:
        return bool(self._per_kind("ttur"))

    def resolved_beta1(self) -> float:
        return float(self._per_kind("beta1"))

    def resolved_label_smoothing(self) -> float:
        return float(self._per_kind("label_smoothing"))

    def ignored_options(self) -> list[str]:
        """Sentences naming the options given that this run's settings make meaningless (printed by fit)."""
        if self.kind == "dcgan" and self.label_smoothing and self.resolved_loss() == "hinge":
            return [f"--label-smoothing {self.label_smoothing:g} applies to --loss bce only; the hinge loss has no "
                    "targets to smooth, so it is ignored"]
        return []

    def resolved_batch(self) -> int:
        return self._per_kind("batch_size")

    def resolved_size(self, data_is_mnist: bool) -> int:
        if self.image_size is not None:
            return self.image_size
        if self.kind == "pix2pix":
            return 64
        return 28 if data_is_mnist else 32

    @property
    def d_lr(self) -> float:
        if self.lr_d is not None:
            return self.lr_d
        return self.lr * 2 if self.resolved_ttur() else self.lr

    @property
    def ema_decay(self) -> float:
        return float(self._per_kind("ema"))

    def validate(self) -> None:
        """The mistakes that can be caught before reading any data."""
        if self.epochs is not None and self.epochs < 1:
            raise TransferkitError(f"--epochs must be at least 1 (got {self.epochs}).")
        if self.max_steps is not None and self.max_steps < 1:
            raise TransferkitError(f"--max-steps must be at least 1 (got {self.max_steps}).")
        if self.time_budget is not None and self.time_budget < 0:
            raise TransferkitError(f"--time-budget must be a number of minutes, 0 for no limit (got {self.time_budget}).")
        if self.batch_size is not None and self.batch_size < 2:
            raise TransferkitError(f"--batch-size must be at least 2 (got {self.batch_size}).")
        if self.lr <= 0 or (self.lr_d is not None and self.lr_d <= 0):
            raise TransferkitError("--lr and --lr-d must be positive.")
        if self.beta1 is not None and not 0 <= self.beta1 < 1:
            raise TransferkitError(f"--beta1 must be in [0, 1) (got {self.beta1}).")
        if not 0 <= self.beta2 < 1:
            raise TransferkitError(f"--beta2 must be in [0, 1) (got {self.beta2}).")
        if self.latent < 1 or (self.width is not None and self.width < 4):
            raise TransferkitError("--latent must be at least 1 and --width at least 4.")
        if self.blocks is not None and self.blocks < 0:
            raise TransferkitError(f"--blocks must not be negative (got {self.blocks}).")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 0.5:
            raise TransferkitError(f"--label-smoothing must be in [0, 0.5) (got {self.label_smoothing}).")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise TransferkitError(f"--ema must be in [0, 1) (got {self.ema}).")
        if self.adv_weight < 0 or self.l1_weight < 0 or self.adv_weight + self.l1_weight == 0:
            raise TransferkitError("--adv-weight and --l1-weight must not be negative, and not both 0.")
        if not 0 <= self.val_fraction < 1:
            raise TransferkitError(f"--val-fraction must be in [0, 1) (got {self.val_fraction}).")
        if self.fid_every < 0 or self.fid_samples < 4:
            raise TransferkitError("--fid-every must not be negative and --fid-samples must be at least 4.")
        if self.max_images is not None and self.max_images < 4:
            raise TransferkitError("--max-images must be at least 4.")
        if self.threads is not None and self.threads < 1:
            raise TransferkitError("--threads must be at least 1.")
        if self.kind == "pix2pix" and (self.blocks or self.loss == "hinge" or self.diff_augment):
            raise TransferkitError("--blocks, --loss and --diff-augment are for --kind dcgan.")
        if self.kind == "dcgan" and self.edges:
            raise TransferkitError("--edges is for --kind pix2pix.")
        if self.kind == "pix2pix" and self.conditional:
            raise TransferkitError("--conditional is for --kind dcgan (pix2pix is conditioned on its input image).")
        if self.image_size is not None:
            check_size(self.kind, self.image_size)


def check_size(kind: str, size: int) -> None:
    if kind == "dcgan":
        if size % 4 or not 16 <= size <= 128:
            raise TransferkitError(f"--image-size for dcgan must be a multiple of 4 from 16 to 128 (got {size}).")
    elif size & (size - 1) or not 16 <= size <= 256:
        raise TransferkitError(f"--image-size for pix2pix must be a power of two from 16 to 256 (got {size}).")
