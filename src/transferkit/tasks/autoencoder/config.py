"""Options of `autoencoder fit` and `autoencoder finetune`, with documented defaults.

The defaults train a good MNIST autoencoder in about a minute on a 2-core CPU
(see BENCHMARKS.md); every field is a flag (``noise_level`` -> ``--noise-level``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from transferkit.core.config import doc
from transferkit.core.engine import TrainConfig
from transferkit.errors import TransferkitError
KINDS = ("dense", "conv", "denoising", "sparse", "stacked")
NOISE_KINDS = ("gaussian", "salt-pepper", "mask", "bars")

# default corruption strength per noise kind (see noise.py for what ``level`` means)
DEFAULT_NOISE_LEVEL = {"gaussian": 0.3, "salt-pepper": 0.2, "mask": 0.3, "bars": 0.25}
# default training length: small data sets get more epochs, so that every run makes about this many steps
TARGET_STEPS = 4000
MIN_EPOCHS, MAX_EPOCHS = 20, 200
# default penalty weight per sparsity kind
DEFAULT_SPARSITY_WEIGHT = {"l1": 1e-3, "kl": 1e-2}


@dataclass
class AEConfig(TrainConfig):
    """How to train an autoencoder (``transferkit autoencoder fit``)."""

    kind: Literal["dense", "conv", "denoising", "sparse", "stacked"] = doc(
        "dense, conv, denoising (learns to undo --noise), sparse (penalised codes), or stacked (greedy layer-wise)", "dense")
    latent: int = doc("code size (dimensions of the latent space); 2 adds latent-plane pictures", 32)
    arch: Literal["auto", "dense", "conv"] = doc(
        "network for denoising/sparse/--colorize: auto = conv for --kind conv and --colorize, else dense", "auto")
    hidden: tuple[int, ...] = doc("dense hidden layer sizes, shrinking towards the code", (512, 256))
    channels: tuple[int, ...] = doc("conv channels per stride-2 block", (32, 64))
    layers: tuple[int, ...] = doc(
        "stacked: layer sizes, shrinking, the last is the code (e.g. 500,250,30); default: --hidden then --latent", ())
    layer_epochs: Optional[int] = doc("stacked: epochs per greedy layer (default: as --epochs)", None)
    unrolled_epochs: Optional[int] = doc(
        "stacked: epochs of end-to-end reconstruction training of the unrolled stack after greedy pretraining "
        "(0: none; default: half of --epochs)", None)
    noise: Literal["gaussian", "salt-pepper", "mask", "bars"] = doc("denoising: the corruption", "gaussian")
    noise_level: Optional[float] = doc(
        "denoising: strength (gaussian std; salt-pepper/mask: pixel fraction; bars: row/column fraction); "
        "default 0.3 / 0.2 / 0.3 / 0.25", None)
    sparsity: Literal["l1", "kl"] = doc("sparse: L1 activity penalty on the codes, or KL divergence to a target activation", "l1")
    sparsity_weight: Optional[float] = doc("sparse: penalty weight (default 1e-3 for l1, 1e-2 for kl)", None)
    sparsity_target: float = doc("sparse with kl: target mean activation of each code unit", 0.05)
    colorize: bool = doc("learn grey -> colour: the input is the grey version of each colour image", False)
    size: tuple[int, ...] = doc("H,W that image folders are resized to (digits and MNIST keep theirs)", (32, 32))
    grayscale: bool = doc("read image folders as grey (default: colour)", False)
    val_fraction: float = doc("held-out part of DATA for validation and pictures (0: train on everything)", 0.2)
    max_images: Optional[int] = doc("use at most this many images (a seeded random subset)", None)
    epochs: Optional[int] = doc(
        f"training epochs (default: enough for about {TARGET_STEPS} steps, {MIN_EPOCHS} to {MAX_EPOCHS} epochs)", None)
    batch_size: int = doc("samples per batch", 64)
    lr: float = doc("learning rate (Adam, cosine decay)", 2e-3)
    threads: Optional[int] = doc("CPU threads for PyTorch (None: PyTorch's default; 1 is far faster on a busy machine)", None)

    def epochs_for(self, n_train: int) -> int:
        """--epochs, or by default enough epochs for about TARGET_STEPS optimiser steps on ``n_train`` images."""
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = max(1, n_train // self.batch_size)
        return int(min(MAX_EPOCHS, max(MIN_EPOCHS, -(-TARGET_STEPS // steps_per_epoch))))

    @property
    def network(self) -> str:
        """dense or conv: the architecture this config trains."""
        if self.kind == "conv":
            return "conv"
        if self.kind in ("dense", "stacked"):
            return "dense"
        if self.arch != "auto":
            return self.arch
        return "conv" if self.colorize else "dense"

    @property
    def level(self) -> float:
        return self.noise_level if self.noise_level is not None else DEFAULT_NOISE_LEVEL[self.noise]

    @property
    def penalty(self) -> float:
        return self.sparsity_weight if self.sparsity_weight is not None else DEFAULT_SPARSITY_WEIGHT[self.sparsity]

    @property
    def stack(self) -> tuple[int, ...]:
        """stacked: the layer sizes after the input (last = code)."""
        return tuple(self.layers) if self.layers else (*self.hidden, self.latent)

    def validate(self) -> None:
        """The mistakes that can be caught before reading any data."""
        if self.threads is not None and self.threads < 1:
            raise TransferkitError("--threads must be at least 1.")
        if self.epochs is not None and self.epochs < 1:
            raise TransferkitError(f"--epochs must be at least 1 (got {self.epochs}).")
        if self.latent < 1:
            raise TransferkitError(f"--latent must be at least 1 (got {self.latent}).")
        if not 0 <= self.val_fraction < 1:
            raise TransferkitError(f"--val-fraction must be in [0, 1) (got {self.val_fraction}).")
        if self.kind == "stacked":
            sizes = self.stack
            if len(sizes) < 1 or any(s < 1 for s in sizes):
                raise TransferkitError("--layers needs positive sizes, e.g. 500,250,30.")
            if any(b >= a for a, b in zip(sizes[:-1], sizes[1:])):
                raise TransferkitError(
                    f"--layers must shrink towards the code (got {','.join(map(str, sizes))}); e.g. 500,250,30.")
            if self.colorize:
                raise TransferkitError("--colorize works with --kind dense, conv, denoising or sparse, not stacked.")
        elif self.layers:
            raise TransferkitError("--layers is for --kind stacked; use --hidden for the other dense kinds.")
        if self.network == "dense" and any(b > a for a, b in zip(self.hidden[:-1], self.hidden[1:])):
            raise TransferkitError(f"--hidden sizes must not grow towards the code (got {','.join(map(str, self.hidden))}).")
        if not self.channels or any(c < 1 for c in self.channels):
            raise TransferkitError("--channels needs positive channel counts, e.g. 32,64.")
        if len(self.size) != 2 or min(self.size) < 4:
            raise TransferkitError(f"--size must be H,W of at least 4 pixels each (got {','.join(map(str, self.size))}).")
        if self.noise_level is not None and not 0 <= self.noise_level <= 1:
            raise TransferkitError(f"--noise-level must be between 0 and 1 (got {self.noise_level}).")
        if not 0 < self.sparsity_target < 1:
            raise TransferkitError(f"--sparsity-target must be between 0 and 1 (got {self.sparsity_target}).")
        if self.max_images is not None and self.max_images < 2:
            raise TransferkitError("--max-images must be at least 2.")
        if self.noise not in NOISE_KINDS:  # pragma: no cover - Literal already checks
            raise TransferkitError(f"Unknown --noise {self.noise!r}.")


@dataclass
class FinetuneConfig(TrainConfig):
    """How `autoencoder finetune` trains a classifier on a pretrained encoder (the five steps)."""

    head_epochs: int = doc("step 4: epochs training the new head on the frozen encoder "
                           "(an epoch is at least 1,024 draws: small sets are sampled with replacement)", 20)
    epochs: int = doc("step 5: epochs fine-tuning everything after unfreezing", 20)
    lr: float = doc("learning rate of the head (step 4)", 3e-3)
    finetune_lr: float = doc("learning rate when everything is unfrozen (step 5), lower to keep the pretraining", 3e-4)
    batch_size: int = doc("samples per batch", 64)
    num_labelled: Optional[int] = doc("use only this many labelled training images (a seeded, stratified subset)", None)
    val_fraction: float = doc("held-out part of the labelled data, for the test accuracy", 0.2)
    init: Literal["pretrained", "random"] = doc(
        "pretrained: the autoencoder's encoder; random: the same network from random initialisation (a baseline)",
        "pretrained")
    dropout: float = doc("dropout before the head", 0.2)
    threads: Optional[int] = doc("CPU threads for PyTorch (None: PyTorch's default; 1 is far faster on a busy machine)", None)

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise TransferkitError("--threads must be at least 1.")
        if self.head_epochs < 0 or self.epochs < 0 or self.head_epochs + self.epochs == 0:
            raise TransferkitError("--head-epochs and --epochs must not be negative, and not both 0.")
        if not 0 < self.val_fraction < 1:
            raise TransferkitError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction}).")
        if self.num_labelled is not None and self.num_labelled < 2:
            raise TransferkitError("--num-labelled must be at least 2.")
        if not 0 <= self.dropout < 1:
            raise TransferkitError(f"--dropout must be in [0, 1) (got {self.dropout}).")
